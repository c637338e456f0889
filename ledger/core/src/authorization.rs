//! RFC 9396 authorization details: whether a call is one of the exact actions a token is bound to. The gateway asks before it forwards; the fold asks of every recorded call: one function.

use docket_schemas::{AuthorizationDetail, DetailType};

/// What a call did, as a gateway sees it and an `api.called` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallShape<'a> {
    pub audience: &'a str,
    pub method: &'a str,
    /// The path below the gateway's prefix, no query; for MCP, the JSON-RPC method (and tool).
    pub operation: &'a str,
    pub request_hash: Option<&'a str>,
    pub tool: Option<&'a str>,
    pub arguments_hash: Option<&'a str>,
}

/// Whether `call`, made with a token for `token_audience` bound to `details`, is one of
/// them; why not when it is not. A token with no details is bound to nothing: `Ok`.
///
/// An MCP message that is not a tool call (`initialize`, `tools/list`, notifications)
/// passes a token bound to an `mcp_tool` on that audience: it acts on nothing, and a
/// session needs it. A tool call must be the tool, with the arguments when they are named.
pub fn permits(
    details: &[AuthorizationDetail],
    token_audience: &str,
    call: &CallShape<'_>,
) -> Result<(), String> {
    if details.is_empty() {
        return Ok(());
    }
    let located = |d: &AuthorizationDetail| {
        call.audience == token_audience
            && (d.locations.is_empty() || d.locations.iter().any(|l| l == call.audience))
    };
    let session_message = call.tool.is_none() && !call.operation.starts_with("tools/call");
    let fits = |d: &AuthorizationDetail| {
        located(d)
            && match d.kind {
                DetailType::ApiCall => {
                    d.actions.iter().any(|a| a == call.method)
                        && d.identifier == call.operation
                        && d.request_hash
                            .as_deref()
                            .is_none_or(|h| Some(h) == call.request_hash)
                }
                DetailType::McpTool => {
                    call.method == "POST"
                        && (session_message
                            || (call.tool == Some(d.identifier.as_str())
                                && d.arguments_hash
                                    .as_deref()
                                    .is_none_or(|h| Some(h) == call.arguments_hash)))
                }
            }
    };
    if details.iter().any(fits) {
        return Ok(());
    }
    let approved: Vec<String> = details
        .iter()
        .map(|d| match d.kind {
            DetailType::ApiCall => format!(
                "{} {}{}",
                d.actions.join("|"),
                d.identifier,
                if d.request_hash.is_some() {
                    " (one exact request)"
                } else {
                    ""
                }
            ),
            DetailType::McpTool => format!(
                "tool {}{}",
                d.identifier,
                if d.arguments_hash.is_some() {
                    " (exact arguments)"
                } else {
                    ""
                }
            ),
        })
        .collect();
    Err(format!(
        "the token is bound to {}; this call is {} {}{}",
        approved.join(", "),
        call.method,
        call.operation,
        match call.tool {
            Some(t) => format!(" (tool {t})"),
            None => String::new(),
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(identifier: &str, hash: Option<&str>) -> AuthorizationDetail {
        AuthorizationDetail {
            kind: DetailType::ApiCall,
            actions: vec!["POST".into()],
            locations: vec![],
            identifier: identifier.into(),
            request_hash: hash.map(String::from),
            arguments_hash: None,
        }
    }

    fn call<'a>(method: &'a str, operation: &'a str, hash: Option<&'a str>) -> CallShape<'a> {
        CallShape {
            audience: "gh",
            method,
            operation,
            request_hash: hash,
            tool: None,
            arguments_hash: None,
        }
    }

    #[test]
    fn an_api_call_must_be_the_approved_method_path_and_request() {
        let d = [api("/repos/a/b/issues", Some("h1"))];
        assert_eq!(
            permits(&d, "gh", &call("POST", "/repos/a/b/issues", Some("h1"))),
            Ok(())
        );
        for other in [
            call("POST", "/repos/a/b/issues", Some("h2")),
            call("POST", "/repos/a/b/issues", None),
            call("DELETE", "/repos/a/b/issues", Some("h1")),
            call("POST", "/repos/a/c/issues", Some("h1")),
        ] {
            let why = permits(&d, "gh", &other).unwrap_err();
            assert!(
                why.contains("bound to POST /repos/a/b/issues (one exact request)"),
                "{why}"
            );
        }
        let any_body = [api("/repos/a/b/issues", None)];
        assert_eq!(
            permits(
                &any_body,
                "gh",
                &call("POST", "/repos/a/b/issues", Some("h9"))
            ),
            Ok(())
        );
        let elsewhere = CallShape {
            audience: "slack",
            ..call("POST", "/repos/a/b/issues", Some("h1"))
        };
        assert!(permits(&d, "gh", &elsewhere).is_err());
        assert_eq!(permits(&[], "gh", &call("GET", "/x", None)), Ok(()));
    }

    #[test]
    fn an_mcp_tool_call_must_be_the_tool_and_arguments_but_session_messages_pass() {
        let d = [AuthorizationDetail {
            kind: DetailType::McpTool,
            actions: vec!["tools/call".into()],
            locations: vec!["gh".into()],
            identifier: "create_issue".into(),
            request_hash: None,
            arguments_hash: Some("a1".into()),
        }];
        let tool = |name: &'static str, args: &'static str| CallShape {
            tool: Some(name),
            arguments_hash: Some(args),
            ..call("POST", "tools/call", None)
        };
        assert_eq!(permits(&d, "gh", &tool("create_issue", "a1")), Ok(()));
        assert!(permits(&d, "gh", &tool("create_issue", "a2")).is_err());
        assert!(permits(&d, "gh", &tool("delete_repo", "a1")).is_err());
        assert_eq!(permits(&d, "gh", &call("POST", "initialize", None)), Ok(()));
        // A tool call whose name could not be recorded is not a session message.
        assert!(permits(&d, "gh", &call("POST", "tools/call bad name", None)).is_err());
    }
}
