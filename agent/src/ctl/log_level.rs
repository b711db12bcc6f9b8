//! `outriderctl log-level`: the agent's log filter in force (GetLogLevel); `set LEVEL`
//! changes it at run time and `reset` restores the configured one (SetLogLevel).
use anyhow::Result;
use outrider_proto::admin::v1::{GetLogLevelRequest, SetLogLevelRequest};
use serde::Serialize;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct LogLevelArgs {
    #[command(subcommand)]
    command: Option<LogLevelCommand>,
}

#[derive(Debug, clap::Subcommand)]
enum LogLevelCommand {
    /// Change the filter, e.g. `debug` or `info,access=off`.
    Set {
        /// A tracing filter.
        level: String,
    },
    /// Restore the filter of the agent's configuration.
    Reset,
}

/// `-o json|yaml` of `log-level`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLevelView {
    /// The tracing filter in force.
    pub level: String,
}

pub async fn run(ctx: &mut Ctx, args: LogLevelArgs) -> Result<()> {
    let mut client = ctx.client().await?;
    let response = match args.command {
        None => {
            ctx.call("GetLogLevel", client.get_log_level(GetLogLevelRequest {}))
                .await?
        }
        Some(command) => {
            let level = match command {
                LogLevelCommand::Set { level } => level,
                LogLevelCommand::Reset => String::new(),
            };
            ctx.call(
                "SetLogLevel",
                client.set_log_level(SetLogLevelRequest { level }),
            )
            .await?
        }
    };
    let view = LogLevelView {
        level: response.level,
    };
    ctx.emit(&view, |v| format!("{}\n", v.level))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_field_name() {
        let view = LogLevelView {
            level: "info,access=off".into(),
        };
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            r#"{"level":"info,access=off"}"#
        );
    }
}
