use serde::{Deserialize, Serialize};

use super::JobId;

/// The queue message: only the job's id. The job record is the single source of truth, so a
/// replayed or duplicated message cannot change what a job asks for.
#[derive(Serialize, Deserialize)]
struct JobMessage {
    job_id: String,
}

pub fn encode_job_message(id: JobId) -> String {
    serde_json::to_string(&JobMessage {
        job_id: id.to_string(),
    })
    .expect("a struct of one string always serializes")
}

/// The job id of a message body, or `None` for a body that is not `{"job_id": "<uuid>"}`.
pub fn decode_job_message(body: &str) -> Option<JobId> {
    let message: JobMessage = serde_json::from_str(body).ok()?;
    JobId::parse(&message.job_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = JobId::random();
        let body = encode_job_message(id);
        assert_eq!(body, format!(r#"{{"job_id":"{id}"}}"#));
        assert_eq!(decode_job_message(&body), Some(id));
    }

    #[test]
    fn rejects_other_shapes() {
        for body in [
            "",
            "garbage",
            "{}",
            "[]",
            r#"{"job_id": 42}"#,
            r#"{"job_id": "not-a-uuid"}"#,
            r#"{"id": "0f3c2b1a-1111-4222-8333-444455556666"}"#,
        ] {
            assert_eq!(decode_job_message(body), None, "{body}");
        }
    }
}
