"""snmpdiff.py PREFIX K RPS: TCP counters (/proc/net/snmp, netstat) per request, by network
namespace, between two snapshots PREFIX.K.0 and PREFIX.K.1 (snmp-loop.sh) taken 4 s apart."""
import sys,collections
pre,k,rps=sys.argv[1],sys.argv[2],float(sys.argv[3])
def load(f):
    d={}
    for l in open(f):
        ns,key,v=l.split(); d[(ns,key)]=int(v)
    return d
a=load(f"{pre}.{k}.0"); b=load(f"{pre}.{k}.1")
n=rps*4
keys=['Tcp.InSegs','Tcp.OutSegs','Tcp.ActiveOpens','X.TCPPureAcks','X.DelayedACKs','X.TCPHPAcks','X.TCPHPHits','X.TCPBacklogCoalesce','X.TCPAutoCorking','X.TCPOrigDataSent','X.TCPDelivered','X.TCPFromZeroWindowAdv','X.TCPToZeroWindowAdv','X.TCPWantZeroWindowAdv','X.TCPRcvCoalesce','X.TCPOFOQueue','X.TCPBacklogDrop','X.TCPRetransFail','X.TCPDSACKRecv']
nss=sorted({ns for ns,_ in b})
print('key', *[ns[-8:] for ns in nss])
for key in keys:
    row=[ (b.get((ns,key),0)-a.get((ns,key),0))/n for ns in nss]
    if any(abs(x)>0.001 for x in row): print(key, *['%.3f'%x for x in row])
