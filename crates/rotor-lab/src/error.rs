//! Errors: `ApiError` is a Kubernetes `Status` as the real API server words it; `LabError` is
//! what the lab's library API returns.
//!
//! Owns: the exact status codes, reasons and messages. Must never: carry Secret data.

use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::resources::Resource;

/// A failed API request, rendered as a `Status` object.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

fn details(res: &Resource, name: &str) -> Value {
    let mut d = json!({"kind": res.plural});
    if !name.is_empty() {
        d["name"] = json!(name);
    }
    if !res.group.is_empty() {
        d["group"] = json!(res.group);
    }
    d
}

impl ApiError {
    pub fn not_found(res: &Resource, name: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{name}\" not found", res.qualified()),
            details: Some(details(res, name)),
        }
    }

    pub fn namespace_not_found(ns: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("namespaces \"{ns}\" not found"),
            details: Some(json!({"name": ns, "kind": "namespaces"})),
        }
    }

    pub fn already_exists(res: &Resource, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{} \"{name}\" already exists", res.qualified()),
            details: Some(details(res, name)),
        }
    }

    pub fn conflict(res: &Resource, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                res.qualified()
            ),
            details: Some(details(res, name)),
        }
    }

    /// The RBAC denial, worded as the real authorizer does.
    pub fn forbidden(
        res: &Resource,
        sub: Option<&str>,
        verb: &str,
        ns: Option<&str>,
        name: &str,
        user: &str,
    ) -> ApiError {
        let subject = if name.is_empty() {
            res.qualified()
        } else {
            format!("{} \"{name}\"", res.qualified())
        };
        let resource = match sub {
            Some(s) => format!("{}/{s}", res.plural),
            None => res.plural.to_string(),
        };
        let scope = match ns {
            Some(ns) if res.namespaced => format!("in the namespace \"{ns}\""),
            _ => "at the cluster scope".to_string(),
        };
        ApiError {
            code: 403,
            reason: "Forbidden",
            message: format!(
                "{subject} is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" \
                 in API group \"{}\" {scope}",
                res.group
            ),
            details: Some(details(res, name)),
        }
    }

    pub fn invalid(res: &Resource, name: &str, message: String) -> ApiError {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{} \"{name}\" is invalid: {message}", res.kind),
            details: Some(details(res, name)),
        }
    }

    /// A JSON patch that does not apply (a failed `test` op included): the real server
    /// answers 422 through `NewGenericServerResponse`, with empty details.
    pub fn patch_rejected() -> ApiError {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: "the server rejected our request due to an error in our request".into(),
            details: Some(json!({})),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: "the server does not allow this method on the requested resource".into(),
            details: None,
        }
    }

    pub fn unsupported_media(ct: &str) -> ApiError {
        ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (got {ct:?})"
            ),
            details: None,
        }
    }

    pub fn page_not_found() -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 500,
            reason: "InternalError",
            message: format!("Internal error occurred: {}", message.into()),
            details: Some(json!({"causes": [{"message": "injected by the rotor lab"}]})),
        }
    }

    pub fn timeout() -> ApiError {
        ApiError {
            code: 504,
            reason: "Timeout",
            message: "Timeout: request did not complete within requested timeout - context \
                      deadline exceeded"
                .into(),
            details: Some(json!({})),
        }
    }

    pub fn gone(message: String) -> ApiError {
        ApiError {
            code: 410,
            reason: "Expired",
            message,
            details: None,
        }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.status())).into_response()
    }
}

/// What the lab's library API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The topology file cannot be read.
    #[error("cannot read the topology file {path}: {source}")]
    ReadTopology {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The topology file is not valid.
    #[error("{path}:{line}:{column}: {message}\n  help: {help}")]
    Topology {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
        help: String,
    },
    /// The API server cannot listen where asked.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// A lab file or directory cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The service-account signing key cannot be generated.
    #[error("cannot generate the service-account signing key: {0}")]
    SigningKey(String),
    /// A service-account token cannot be issued (no such ServiceAccount, ...).
    #[error("cannot issue a token for the ServiceAccount {namespace}/{name}: {message}")]
    ServiceAccountToken {
        namespace: String,
        name: String,
        message: String,
    },
    /// An object of the topology was refused by the API.
    #[error("the topology object {kind} {name:?} was refused: {message}")]
    Object {
        kind: String,
        name: String,
        message: String,
    },
}
