//! What the live environment reports during and after a flash: `POST /pxe/{mac}/progress` and
//! `POST /pxe/{mac}/status`.

use serde::{Deserialize, Serialize};

use super::REASON_MAX_CHARS;

/// A flash progress report (`POST /pxe/{mac}/progress`). Every key is sent, null for none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// What the flasher is doing. bty sends its flash phases (`write`, `verify`, `done`);
    /// bty-web takes any 1 to [`super::PHASE_MAX_CHARS`] printable ASCII characters.
    pub phase: String,
    /// Image bytes through the writer so far, zero runs skipped cheaply included.
    pub written_bytes: u64,
    /// The image size, when known (can be an estimate).
    pub total_bytes: Option<u64>,
    pub rate_bytes_per_s: Option<u64>,
}

/// How a flash ended (`POST /pxe/{mac}/status`): `{"status": "done"}` or
/// `{"status": "failed", "reason": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StatusBody", into = "StatusBody")]
pub enum Status {
    Done,
    /// `reason` is empty when none was given (absent or null).
    Failed {
        reason: String,
    },
}

impl Status {
    /// A failure, its reason cut to the [`REASON_MAX_CHARS`] bty-web keeps.
    pub fn failed(reason: &str) -> Status {
        Status::Failed { reason: reason.chars().take(REASON_MAX_CHARS).collect() }
    }
}

/// The JSON object behind [`Status`]: a reason beside `done` is allowed and ignored.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: StatusKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StatusKind {
    Done,
    Failed,
}

impl From<StatusBody> for Status {
    fn from(b: StatusBody) -> Status {
        match b.status {
            StatusKind::Done => Status::Done,
            StatusKind::Failed => Status::Failed { reason: b.reason.unwrap_or_default() },
        }
    }
}

impl From<Status> for StatusBody {
    fn from(s: Status) -> StatusBody {
        match s {
            Status::Done => StatusBody { status: StatusKind::Done, reason: None },
            Status::Failed { reason } => {
                StatusBody { status: StatusKind::Failed, reason: Some(reason) }
            }
        }
    }
}
