//! `outriderctl config`: the configuration in force (GetConfig), as YAML for people and
//! `-o yaml`, as pretty JSON with `-o json`; field names as in the config file.
use anyhow::{Context, Result};
use outrider_proto::admin::v1::GetConfigRequest;

use super::Ctx;
use super::output::{self, Format};

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let mut client = ctx.client().await?;
    let response = ctx
        .call("GetConfig", client.get_config(GetConfigRequest {}))
        .await?;
    ctx.print(&render(&response.json, ctx.format)?)
}

/// The agent's JSON in `format` (a table is YAML here).
fn render(json: &str, format: Format) -> Result<String> {
    let config: serde_json::Value =
        serde_json::from_str(json).context("GetConfig: the agent sent invalid JSON")?;
    let format = match format {
        Format::Table => Format::Yaml,
        other => other,
    };
    output::render(format, &config, |_| String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"nodeName":"node-a","admin":{"socket":"/run/outrider/admin.sock"},"excludeCidrs":["10.96.0.0/12"]}"#;

    #[test]
    fn config_as_yaml_and_json() {
        let yaml = render(JSON, Format::Table).unwrap();
        assert_eq!(render(JSON, Format::Yaml).unwrap(), yaml);
        let back: serde_json::Value = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(
            back,
            serde_json::from_str::<serde_json::Value>(JSON).unwrap()
        );
        assert!(yaml.contains("nodeName: node-a\n"), "{yaml}");
        assert!(
            yaml.contains("  socket: /run/outrider/admin.sock\n"),
            "{yaml}"
        );
        let json = render(JSON, Format::Json).unwrap();
        assert!(json.contains("\n  \"nodeName\": \"node-a\""), "{json}");
        let err = render("{oops", Format::Json).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("GetConfig: the agent sent invalid JSON"),
            "{err:#}"
        );
    }
}
