//! Tasks (the `io.modelcontextprotocol/tasks` extension of 2026-07-28): a server may answer a
//! call with a task handle (`resultType: "task"`, a `taskId`) and the client polls
//! `tasks/get` for the eventual result, answers what it asks with `tasks/update`, or ends it
//! with `tasks/cancel`. A task id is the handle to a call's result: like a session id it is
//! the principal's that made the call, at that server, and no one else's. The gateway
//! refuses a task id it never saw the server hand out (or another principal's), and its
//! records tie each task to the call that created it (`task_id` on both).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::session::Owner;

/// Tasks one user may hold at once; past it, its own oldest is forgotten.
const MAX_PER_USER: usize = 1000;

/// The methods that name a task (by `params.taskId`): every `tasks/` method but the
/// listing (2025-11-25 also has `tasks/result`, and may grow more).
pub fn is_task_method(method: &str) -> bool {
    method.starts_with("tasks/") && method != LIST
}

/// The 2025-11-25 listing of tasks: the gateway cannot narrow it to the principal's own.
pub const LIST: &str = "tasks/list";

/// The task a result hands out: `resultType: "task"` with its `taskId` (2026-07-28), or a
/// `task` object (2025-11-25).
pub fn created(result: &serde_json::Value) -> Option<String> {
    let id = if result.get("resultType").and_then(|t| t.as_str()) == Some("task") {
        result.get("taskId")
    } else {
        result.get("task").and_then(|t| t.get("taskId"))
    };
    id.and_then(|t| t.as_str()).map(str::to_string)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("task {0:?} was created by another principal")]
    NotYours(String),
    #[error("the gateway never saw server {server:?} create task {task:?}: list it from the call that made it")]
    Unknown { server: String, task: String },
}

struct Entry {
    owner: Owner,
    /// The call that created it, as its records name it: `method name (id)`.
    created_by: String,
    at: Instant,
}

#[derive(Default)]
pub struct Tasks {
    map: Mutex<HashMap<(String, String), Entry>>,
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A task `server` handed to `owner` in answer to `created_by`.
    pub fn created(&self, server: &str, task: &str, owner: &Owner, created_by: String) {
        let mut map = self.lock();
        let mine: Vec<(&(String, String), Instant)> = map
            .iter()
            .filter(|(_, e)| e.owner.uid == owner.uid)
            .map(|(k, e)| (k, e.at))
            .collect();
        if mine.len() >= MAX_PER_USER {
            if let Some(oldest) = mine
                .iter()
                .min_by_key(|(_, at)| *at)
                .map(|(k, _)| (*k).clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            (server.to_string(), task.to_string()),
            Entry {
                owner: owner.clone(),
                created_by,
                at: Instant::now(),
            },
        );
    }

    /// Whether `owner` may use `task` of `server`; the call that created it.
    pub fn check(&self, server: &str, task: &str, owner: &Owner) -> Result<String, TaskError> {
        let map = self.lock();
        match map.get(&(server.to_string(), task.to_string())) {
            None => Err(TaskError::Unknown {
                server: server.to_string(),
                task: task.to_string(),
            }),
            Some(e) if e.owner != *owner => Err(TaskError::NotYours(task.to_string())),
            Some(e) => Ok(e.created_by.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(uid: u32) -> Owner {
        Owner {
            uid,
            label: format!("{uid}:/usr/bin/agent"),
        }
    }

    #[test]
    fn a_task_is_its_creators_at_its_server() {
        let t = Tasks::default();
        t.created("s", "t1", &owner(1), "tools/call x (7)".into());
        assert_eq!(t.check("s", "t1", &owner(1)).unwrap(), "tools/call x (7)");
        assert_eq!(
            t.check("s", "t1", &owner(2)),
            Err(TaskError::NotYours("t1".into()))
        );
        assert!(matches!(
            t.check("other", "t1", &owner(1)),
            Err(TaskError::Unknown { .. })
        ));
        assert!(matches!(
            t.check("s", "t2", &owner(1)),
            Err(TaskError::Unknown { .. })
        ));
    }

    #[test]
    fn one_user_cannot_push_out_anothers_tasks() {
        let t = Tasks::default();
        t.created("s", "theirs", &owner(2), "c".into());
        for i in 0..MAX_PER_USER + 10 {
            t.created("s", &format!("mine-{i}"), &owner(1), "c".into());
        }
        assert!(t.check("s", "theirs", &owner(2)).is_ok());
        assert!(t.check("s", "mine-0", &owner(1)).is_err());
        assert!(t
            .check("s", &format!("mine-{}", MAX_PER_USER + 9), &owner(1))
            .is_ok());
    }
}
