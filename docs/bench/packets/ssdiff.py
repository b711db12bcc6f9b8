"""ssdiff.py PREFIX K OPS: TCP segments per operation, by pod and process, between two
`ss -tin` snapshots PREFIX.K.0 and PREFIX.K.1 (ss-loop.sh) taken 4 s apart; OPS is the
load's rate per second (the harness's, for the whole test). Out and in, with data and without
(pure ACKs: no connection opens or closes under wrk's keep-alive load)."""
import sys,re
pre,k,ops=sys.argv[1],sys.argv[2],float(sys.argv[3])*4
def load(f):
    d={}; ns=None; cur=None
    for l in open(f):
        if l.startswith('###'): ns=l.split()[1][-6:]; continue
        if l.startswith('ESTAB'):
            p=l.split(); cur=(ns,p[3],p[4]); m=re.search(r'users:\(\("([^"]+)"',l); d[cur]={'who':m.group(1) if m else '?'}; continue
        if cur and l.startswith((' ','\t')):
            for key in ('segs_out','data_segs_out','segs_in','data_segs_in'):
                m=re.search(r'\b'+key+r':(\d+)',l)
                if m: d[cur][key]=int(m.group(1))
            cur=None
    return d
a=load(f"{pre}.{k}.0"); b=load(f"{pre}.{k}.1")
agg={}
for key,v in b.items():
    if key not in a or 'segs_out' not in v: continue
    u=a[key]; who=v['who']
    g=(key[0],who)
    s=agg.setdefault(g,[0,0,0,0,0])
    s[0]+=1
    for i,f in enumerate(('segs_out','data_segs_out','segs_in','data_segs_in')):
        s[i+1]+=v.get(f,0)-u.get(f,0)
print('ns who nsock | out data_out pure_out | in data_in pure_in  (per op)')
for g,s in sorted(agg.items()):
    print(g, s[0], '| %.3f %.3f %.3f | %.3f %.3f %.3f'%(s[1]/ops,s[2]/ops,(s[1]-s[2])/ops,s[3]/ops,s[4]/ops,(s[3]-s[4])/ops))
