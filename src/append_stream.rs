//! `LogService.AppendStream`: many appends in flight over one stream.
//!
//! One task per stream reads messages of numbered calls, checks each call as
//! `Append` would (validation, leadership) and queues it in the batcher
//! without waiting for its commit. Calls commit in batch order; as they do,
//! every reply ready at that moment goes out in one message. A call that
//! fails gets a `CallError` with the status `Append` would have answered
//! (and the leader's address when this node is not the leader); the stream
//! itself fails only for a malformed message or a client that went away.
//!
//! Backpressure: at most [`STREAM_CALLS_MAX`] calls are in flight per
//! stream; past that the task stops reading until some are answered, so a
//! client that floods a stream slows itself, not the node.

use std::future::Future;
use std::pin::Pin;

use futures::stream::FuturesUnordered;
use futures::FutureExt;
use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;
use tonic::Status;
use tonic::Streaming;
use txlog_proto::AppendCall;
use txlog_proto::AppendReply;
use txlog_proto::AppendStreamRequest;
use txlog_proto::AppendStreamResponse;
use txlog_proto::CallError;
use txlog_proto::APPEND_STREAM_MESSAGE_CALLS_MAX;

use crate::log_service::append_results;
use crate::log_service::LogServer;
use crate::token_check::Caller;

/// Reply messages buffered per stream before the task waits for the client.
pub const STREAM_REPLY_MESSAGES_MAX: usize = 16;
/// Calls in flight on one stream, at most.
pub const STREAM_CALLS_MAX: usize = 4096;
/// Bytes of replies in one message, at most (well under the message limit).
const REPLY_MESSAGE_BYTES_MAX: usize = 1024 * 1024;

type Outbound = mpsc::Sender<Result<AppendStreamResponse, Status>>;
type CallFuture = Pin<Box<dyn Future<Output = AppendReply> + Send>>;

/// The reply to a call that failed with `status`.
fn failed(id: u64, status: Status) -> AppendReply {
    let leader = status
        .metadata()
        .get(crate::LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    AppendReply {
        id,
        results: Vec::new(),
        error: Some(CallError {
            code: status.code() as i32,
            message: status.message().to_string(),
            leader,
        }),
    }
}

/// `replies` as messages of at most [`REPLY_MESSAGE_BYTES_MAX`] each (a
/// reply carries 3 numbers per record, so thousands of calls answered at
/// once could otherwise pass the message limit).
fn reply_messages(replies: Vec<AppendReply>) -> Vec<AppendStreamResponse> {
    let mut messages = Vec::new();
    let mut current = AppendStreamResponse::default();
    let mut bytes = 0;
    for reply in replies {
        let size = prost::Message::encoded_len(&reply) + 8;
        if !current.replies.is_empty() && bytes + size > REPLY_MESSAGE_BYTES_MAX {
            messages.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.replies.push(reply);
    }
    if !current.replies.is_empty() {
        messages.push(current);
    }
    messages
}

impl LogServer {
    /// Check `call` (made by `caller`) and queue it; its reply, now if it
    /// failed, else once it commits.
    async fn start_call(&self, call: AppendCall, caller: Option<&Caller>) -> Result<CallFuture, AppendReply> {
        let id = call.id;
        let fail = |err| failed(id, self.reject(err));
        let records = self
            .validate_append(txlog_proto::AppendRequest { records: call.records })
            .map_err(fail)?;
        self.authorize_append(caller, &records)
            .map_err(|status| failed(id, status))?;
        self.leader.leader().await.map_err(fail)?;
        let committed = self.batcher.submit(records).await.map_err(fail)?;
        let server = self.clone();
        Ok(Box::pin(async move {
            match committed.await {
                Ok(outcomes) => AppendReply {
                    id,
                    results: append_results(outcomes),
                    error: None,
                },
                Err(err) => failed(id, server.reject(err)),
            }
        }))
    }

    /// Serve one stream until the client closes it (and every call is
    /// answered), it breaks, or the node shuts down.
    pub async fn serve_append_stream(self, mut inbound: Streaming<AppendStreamRequest>, outbound: Outbound) {
        /// Counts the stream as open until this task ends, however it ends.
        struct Open(Gauge);
        impl Drop for Open {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        self.metrics.append_streams.inc();
        let _open = Open(self.metrics.append_streams.clone());
        let mut pending: FuturesUnordered<CallFuture> = FuturesUnordered::new();
        let mut reading = true;
        loop {
            if !reading && pending.is_empty() {
                // The client closed its side and every call is answered: end the stream (OK).
                return;
            }
            let mut replies = Vec::new();
            tokio::select! {
                _ = outbound.closed() => return,
                _ = self.shutdown.cancelled() => {
                    let _ = outbound.send(Err(Status::unavailable("node is shutting down"))).await;
                    return;
                }
                // Room for a whole message of calls, so the bound holds.
                message = inbound.message(), if reading && pending.len() + APPEND_STREAM_MESSAGE_CALLS_MAX <= STREAM_CALLS_MAX => match message {
                    Ok(Some(message)) => {
                        if message.calls.len() > APPEND_STREAM_MESSAGE_CALLS_MAX {
                            self.metrics.rejected_requests.inc();
                            let _ = outbound
                                .send(Err(Status::invalid_argument(format!(
                                    "{} calls in one append stream message; the maximum is {APPEND_STREAM_MESSAGE_CALLS_MAX}",
                                    message.calls.len()
                                ))))
                                .await;
                            return;
                        }
                        // Each message carries its own token, bound to the
                        // message without it; a refusal answers each call.
                        let mut message = message;
                        let token = message.token.take();
                        let caller = self.guard.authenticate_message(
                            token.as_ref(),
                            &message,
                            txlog_client::methods::APPEND_STREAM,
                        );
                        for call in message.calls {
                            let started = match &caller {
                                Ok(caller) => self.start_call(call, caller.as_ref()).await,
                                Err(status) => Err(failed(call.id, status.clone())),
                            };
                            match started {
                                Ok(future) => pending.push(future),
                                Err(reply) => replies.push(reply),
                            }
                        }
                    }
                    Ok(None) => reading = false,
                    // An undecodable message, or the client reset the stream
                    // (then nobody reads this answer).
                    Err(status) => {
                        let status = crate::error::codec_status(&status).unwrap_or(status);
                        let _ = outbound.send(Err(status)).await;
                        return;
                    }
                },
                Some(reply) = pending.next(), if !pending.is_empty() => {
                    replies.push(reply);
                    // Everything else already committed goes in the same message.
                    while let Some(Some(reply)) = pending.next().now_or_never() {
                        replies.push(reply);
                    }
                }
            }
            for message in reply_messages(replies) {
                if outbound.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txlog_proto::AppendResult;

    /// Replies are split into messages under the byte limit, none lost or
    /// reordered, and a single reply larger than the limit still goes out.
    #[test]
    fn replies_split_under_the_byte_limit() {
        let result = AppendResult {
            seq: u64::MAX,
            channel_seq: u64::MAX,
            duplicate: true,
        };
        let reply = |id, records| AppendReply {
            id,
            results: vec![result; records],
            error: None,
        };
        let replies: Vec<AppendReply> = (0..400).map(|id| reply(id, 4096)).collect();
        let messages = reply_messages(replies);
        assert!(messages.len() > 1);
        for message in &messages {
            assert!(prost::Message::encoded_len(message) <= REPLY_MESSAGE_BYTES_MAX + 64);
        }
        let ids: Vec<u64> = messages.iter().flat_map(|m| m.replies.iter().map(|r| r.id)).collect();
        assert_eq!(ids, (0..400).collect::<Vec<_>>());

        let huge = reply_messages(vec![reply(1, REPLY_MESSAGE_BYTES_MAX / 8)]);
        assert_eq!(huge.len(), 1);
        assert!(reply_messages(Vec::new()).is_empty());
    }
}
