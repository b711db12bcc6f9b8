//! `outriderctl policies`: the authorization policies in force (ListPolicies), one as
//! YAML (`get`), applying YAML documents (`apply -f FILE`, ApplyPolicies) and removing one
//! the admin API applied (`delete`, DeletePolicy).
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Result, bail};
use outrider_proto::admin::v1::{
    ApplyPoliciesRequest, DeletePolicyRequest, ListPoliciesRequest, Policy,
};
use serde::Serialize;

use super::output::{Format, Table, yes_no};
use super::{Ctx, NamespacedName};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct PoliciesArgs {
    #[command(subcommand)]
    command: Option<PoliciesCommand>,
    /// Only policies in this namespace.
    #[arg(short, long, value_name = "NAMESPACE")]
    namespace: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum PoliciesCommand {
    /// One policy: its YAML (-o json|yaml: its summary and YAML).
    Get {
        #[arg(value_name = "NAMESPACE/NAME")]
        policy: NamespacedName,
    },
    /// Check AuthorizationPolicy documents and put them in force.
    Apply {
        /// The YAML file (one or more documents); `-` reads stdin.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
        /// Check only; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove a policy the admin API applied.
    Delete {
        #[arg(value_name = "NAMESPACE/NAME")]
        policy: NamespacedName,
    },
}

/// What `policies apply -f` reads.
const POLICY_INPUT: &str = "AuthorizationPolicy YAML documents";

/// `-o json|yaml` of `policies`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyListView {
    pub policies: Vec<PolicyView>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyView {
    pub namespace: String,
    pub name: String,
    /// `ALLOW`, `DENY` or `AUDIT`.
    pub action: String,
    /// Number of rules.
    pub rules: u32,
    /// matchLabels; empty: the whole namespace (the mesh for the root namespace).
    pub selector: BTreeMap<String, String>,
    /// The file (and document) it was read from.
    pub source: String,
    /// Applied through the admin API (only those can be deleted through it).
    pub applied_by_admin: bool,
    /// The policy as YAML.
    pub yaml: String,
}

impl From<Policy> for PolicyView {
    fn from(p: Policy) -> Self {
        PolicyView {
            namespace: p.namespace,
            name: p.name,
            action: p.action,
            rules: p.rules,
            selector: p.selector.into_iter().collect(),
            source: p.source,
            applied_by_admin: p.applied_by_admin,
            yaml: p.yaml,
        }
    }
}

/// `-o json|yaml` of `policies apply` and `policies delete` (one item).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyView {
    pub dry_run: bool,
    pub applied: Vec<OutcomeView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutcomeView {
    pub namespace: String,
    pub name: String,
    /// `created`, `configured`, `unchanged`; `deleted` from `policies delete`.
    pub outcome: String,
}

pub async fn run(ctx: &mut Ctx, args: PoliciesArgs) -> Result<()> {
    match args.command {
        None => {
            let view = PolicyListView {
                policies: list(ctx, args.namespace.unwrap_or_default()).await?,
            };
            ctx.emit(&view, list_table)
        }
        Some(PoliciesCommand::Get { policy }) => {
            let found = list(ctx, policy.namespace.clone())
                .await?
                .into_iter()
                .find(|p| p.name == policy.name);
            let Some(found) = found else {
                bail!("policy {policy} not found");
            };
            if ctx.format == Format::Table {
                return ctx.print(&found.yaml);
            }
            ctx.emit(&found, |_| String::new())
        }
        Some(PoliciesCommand::Apply { file, dry_run }) => {
            let (yaml, _) = super::read_input(&file, POLICY_INPUT)?;
            let mut client = ctx.client().await?;
            let request = ApplyPoliciesRequest { yaml, dry_run };
            let response = ctx
                .call("ApplyPolicies", client.apply_policies(request))
                .await?;
            let view = ApplyView {
                dry_run,
                applied: response
                    .applied
                    .into_iter()
                    .map(|a| OutcomeView {
                        namespace: a.namespace,
                        name: a.name,
                        outcome: a.outcome,
                    })
                    .collect(),
            };
            ctx.emit(&view, outcome_lines)
        }
        Some(PoliciesCommand::Delete { policy }) => {
            let mut client = ctx.client().await?;
            let request = DeletePolicyRequest {
                namespace: policy.namespace.clone(),
                name: policy.name.clone(),
            };
            ctx.call("DeletePolicy", client.delete_policy(request))
                .await?;
            let view = OutcomeView {
                namespace: policy.namespace,
                name: policy.name,
                outcome: "deleted".into(),
            };
            ctx.emit(&view, |v| outcome_line(v, false))
        }
    }
}

/// The policies of `namespace` (all when empty), ordered by namespace and name.
async fn list(ctx: &mut Ctx, namespace: String) -> Result<Vec<PolicyView>> {
    let mut client = ctx.client().await?;
    let response = ctx
        .call(
            "ListPolicies",
            client.list_policies(ListPoliciesRequest { namespace }),
        )
        .await?;
    let mut policies: Vec<PolicyView> = response.policies.into_iter().map(Into::into).collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(policies)
}

fn list_table(view: &PolicyListView) -> String {
    let mut table = Table::new([
        "NAMESPACE",
        "NAME",
        "ACTION",
        "RULES",
        "SELECTOR",
        "SOURCE",
        "ADMIN",
    ]);
    for p in &view.policies {
        let selector: Vec<String> = p.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        table.row([
            p.namespace.clone(),
            p.name.clone(),
            p.action.clone(),
            p.rules.to_string(),
            selector.join(","),
            p.source.clone(),
            yes_no(p.applied_by_admin).to_string(),
        ]);
    }
    table.render()
}

/// `policy NAMESPACE/NAME OUTCOME`, ` (dry run)` after it when nothing changed for real.
fn outcome_line(o: &OutcomeView, dry_run: bool) -> String {
    let suffix = if dry_run { " (dry run)" } else { "" };
    format!("policy {}/{} {}{suffix}\n", o.namespace, o.name, o.outcome)
}

fn outcome_lines(view: &ApplyView) -> String {
    view.applied
        .iter()
        .map(|o| outcome_line(o, view.dry_run))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            namespace: "default".into(),
            name: "allow-web".into(),
            action: "ALLOW".into(),
            rules: 2,
            selector: [
                ("tier".to_string(), "web".to_string()),
                ("app".to_string(), "server".to_string()),
            ]
            .into(),
            source: "/etc/outrider/policies/web.yaml#1".into(),
            applied_by_admin: true,
            yaml: "apiVersion: outrider.io/v1alpha1\n".into(),
        }
    }

    #[test]
    fn policy_table_and_json() {
        let view = PolicyListView {
            policies: vec![policy().into()],
        };
        assert_eq!(
            list_table(&view),
            "NAMESPACE  NAME       ACTION  RULES  SELECTOR             SOURCE                             ADMIN\n\
             default    allow-web  ALLOW   2      app=server,tier=web  /etc/outrider/policies/web.yaml#1  yes\n"
        );
        assert_eq!(
            serde_json::to_value(PolicyView::from(policy())).unwrap(),
            serde_json::json!({
                "namespace": "default",
                "name": "allow-web",
                "action": "ALLOW",
                "rules": 2,
                "selector": {"app": "server", "tier": "web"},
                "source": "/etc/outrider/policies/web.yaml#1",
                "appliedByAdmin": true,
                "yaml": "apiVersion: outrider.io/v1alpha1\n"
            })
        );
    }

    #[test]
    fn apply_and_delete_lines() {
        let view = ApplyView {
            dry_run: true,
            applied: vec![
                OutcomeView {
                    namespace: "default".into(),
                    name: "a".into(),
                    outcome: "created".into(),
                },
                OutcomeView {
                    namespace: "apps".into(),
                    name: "b".into(),
                    outcome: "unchanged".into(),
                },
            ],
        };
        assert_eq!(
            outcome_lines(&view),
            "policy default/a created (dry run)\npolicy apps/b unchanged (dry run)\n"
        );
        assert_eq!(
            serde_json::to_value(&view).unwrap(),
            serde_json::json!({
                "dryRun": true,
                "applied": [
                    {"namespace": "default", "name": "a", "outcome": "created"},
                    {"namespace": "apps", "name": "b", "outcome": "unchanged"}
                ]
            })
        );
        assert_eq!(
            outcome_line(&view.applied[0], false),
            "policy default/a created\n"
        );
    }

    #[test]
    fn apply_input_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.yaml");
        let err = crate::ctl::read_input(&missing, POLICY_INPUT).unwrap_err();
        assert!(
            format!("{err:#}").starts_with(&format!("cannot read {}: ", missing.display())),
            "{err:#}"
        );
        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, "\n  \n").unwrap();
        assert_eq!(
            crate::ctl::read_input(&empty, POLICY_INPUT)
                .unwrap_err()
                .to_string(),
            format!(
                "{} is empty: expected AuthorizationPolicy YAML documents",
                empty.display()
            )
        );
    }
}
