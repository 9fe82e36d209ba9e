//! Time passing for a child session: when its next timer is due, and
//! what it does then (heartbeats, dead-link and unanswered-request
//! timeouts).

use super::*;

impl ChildSession {
    /// When [`ChildSession::on_tick`] next has work (idle timeout, an
    /// unanswered handshake, batch or fetch, a heartbeat), on the clock of
    /// its `now_ms`; `None` when closed or not opened. The node sleeps
    /// until then.
    pub fn next_tick_ms(&self) -> Option<i64> {
        let after = |since: i64, ms: i64| since.saturating_add(ms).saturating_add(1);
        if matches!(self.state, State::Closed | State::Idle) {
            return None;
        }
        let mut t = after(self.last_rx_ms, self.cfg.idle_timeout_ms);
        if !self.welcomed {
            t = t.min(after(self.opened_at_ms, self.cfg.ack_timeout_ms));
        }
        let waiting = self
            .inflight
            .front()
            .map(|f| f.sent_at_ms)
            .or_else(|| self.repair.as_ref()?.fetch_sent_ms);
        if let Some(since) = waiting {
            t = t.min(after(since, self.cfg.ack_timeout_ms));
        }
        Some(t.min(self.last_tx_ms.saturating_add(self.cfg.heartbeat_ms)))
    }

    /// Time passes: heartbeats and dead-link detection.
    pub fn on_tick(&mut self, log: &dyn LocalLog, now_ms: i64) -> Vec<Output> {
        let mut out = Vec::new();
        if matches!(self.state, State::Closed | State::Idle) {
            return out;
        }
        if now_ms - self.last_rx_ms > self.cfg.idle_timeout_ms {
            let reason = format!(
                "no frame from the parent for {} ms",
                now_ms - self.last_rx_ms
            );
            self.close(&mut out, reason);
            return out;
        }
        if !self.welcomed && now_ms - self.opened_at_ms > self.cfg.ack_timeout_ms {
            let reason = format!("handshake unanswered for {} ms", now_ms - self.opened_at_ms);
            self.close(&mut out, reason);
            return out;
        }
        let waiting = self
            .inflight
            .front()
            .map(|f| (format!("batch {}", f.id), f.sent_at_ms))
            .or_else(|| {
                let sent = self.repair.as_ref()?.fetch_sent_ms?;
                Some(("fetch".to_owned(), sent))
            });
        if let Some((what, since)) = waiting {
            if now_ms - since > self.cfg.ack_timeout_ms {
                let reason = format!("{what} unanswered for {} ms", now_ms - since);
                self.close(&mut out, reason);
                return out;
            }
        }
        if now_ms - self.last_tx_ms >= self.cfg.heartbeat_ms {
            // A parent takes lag reports once it has welcomed the child;
            // one sent before would count as sent but be dropped there.
            let lag = if self.welcomed {
                self.lag(log)
            } else {
                Vec::new()
            };
            self.send(&mut out, Frame::Ping { lag }, now_ms);
        }
        out
    }
}
