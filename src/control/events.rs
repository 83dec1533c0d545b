//! A bounded ring of operational events (member failed, degraded, fault
//! added or cleared, member removed), logged with tracing as they happen and
//! shown by `vraid status --json`.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Events kept per volume; older ones are dropped.
pub const EVENT_CAPACITY: usize = 256;

/// One event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Volume name.
    pub volume: String,
    /// Machine-readable kind: `member_failed`, `degraded`, `failed`,
    /// `member_removed`, `fault_added`, `fault_cleared`.
    pub kind: String,
    /// Member role, when the event is about one member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<usize>,
    /// Human-readable text.
    pub message: String,
}

/// The ring of one volume.
#[derive(Debug, Default)]
pub struct EventLog {
    ring: Mutex<VecDeque<Event>>,
}

impl EventLog {
    /// An empty log.
    pub fn new() -> EventLog {
        EventLog::default()
    }

    /// Records an event and logs it.
    pub fn push(&self, volume: &str, kind: &str, member: Option<usize>, message: String) {
        tracing::warn!(volume, kind, member, "{message}");
        let event = Event {
            time_ms: super::now_ms(),
            volume: volume.to_string(),
            kind: kind.to_string(),
            member,
            message,
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == EVENT_CAPACITY {
            ring.pop_front();
        }
        ring.push_back(event);
    }

    /// Every kept event, oldest first.
    pub fn snapshot(&self) -> Vec<Event> {
        self.ring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_only_the_newest_events() {
        // Arrange
        let log = EventLog::new();
        // Act
        for i in 0..EVENT_CAPACITY + 5 {
            log.push("v", "fault_added", Some(i), format!("event {i}"));
        }
        // Assert
        let events = log.snapshot();
        assert_eq!(events.len(), EVENT_CAPACITY);
        assert_eq!(events[0].member, Some(5));
        assert_eq!(events.last().unwrap().member, Some(EVENT_CAPACITY + 4));
    }
}
