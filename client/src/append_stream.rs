//! Appends over `LogService.AppendStream`: one long-lived stream per node
//! address, shared by every caller of a [`Client`] and its clones.
//!
//! Callers queue their records here. One task per stream takes everything
//! queued at once, sends it as one message of numbered calls, and hands each
//! reply to its caller by id. With many callers, one message (one HTTP/2
//! frame, one decode, one wakeup on the node) carries many appends; with one
//! caller, a call is sent the moment it is queued, with no timer.
//!
//! A stream that breaks fails every call in flight on it with `UNAVAILABLE`;
//! the caller's retry loop sends those records again (the txid makes that
//! safe), and the next call opens a new stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;
use tonic::Status;
use txlog_proto::log_service_client::LogServiceClient;
use txlog_proto::AppendCall;
use txlog_proto::AppendReply;
use txlog_proto::AppendResult;
use txlog_proto::AppendStreamRequest;
use txlog_proto::Record;
use txlog_proto::APPEND_STREAM_MESSAGE_CALLS_MAX;

use crate::Credentials;
use crate::LEADER_METADATA_KEY;
use crate::MESSAGE_BYTES_MAX;

/// Calls queued for a stream before callers wait for room.
const QUEUE_CALLS_MAX: usize = 4096;
/// Messages the stream's sender buffers before the task stops taking calls.
const OUTBOUND_MESSAGES_MAX: usize = 16;
/// Bytes of records one message carries, at most (a single larger call is
/// sent alone; the caller already checked it against the message limit).
const MESSAGE_RECORD_BYTES_MAX: usize = MESSAGE_BYTES_MAX / 4;

type Reply = Result<Vec<AppendResult>, Status>;

struct Queued {
    records: Vec<Record>,
    bytes: usize,
    reply: oneshot::Sender<Reply>,
}

/// The caller's end of one node's append stream.
#[derive(Clone)]
pub(crate) struct AppendSession {
    tx: mpsc::Sender<Queued>,
}

impl AppendSession {
    /// Start the task for the node behind `channel`; it opens the stream on
    /// the first call and ends when every handle is dropped.
    pub fn start(
        address: String,
        channel: Channel,
        open_timeout: Duration,
        credentials: Option<Arc<Credentials>>,
    ) -> AppendSession {
        let (tx, rx) = mpsc::channel(QUEUE_CALLS_MAX);
        tokio::spawn(run(address, channel, open_timeout, credentials, rx));
        AppendSession { tx }
    }

    /// Append `records` (`bytes` encoded as one call) on this node; the
    /// answer `Append` would give.
    pub async fn append(&self, records: Vec<Record>, bytes: usize) -> Reply {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Queued { records, bytes, reply })
            .await
            .map_err(|_| Status::unavailable("append stream task ended"))?;
        rx.await
            .map_err(|_| Status::unavailable("append stream closed before the call was answered"))?
    }
}

/// Calls sent and not yet answered, by id.
struct InFlight {
    next_id: u64,
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
}

impl InFlight {
    fn fail_all(&mut self, status: &Status) {
        for (_, reply) in self.waiting.drain() {
            let _ = reply.send(Err(Status::new(status.code(), status.message())));
        }
    }

    fn answer(&mut self, reply: AppendReply) {
        let Some(waiter) = self.waiting.remove(&reply.id) else {
            tracing::warn!(id = reply.id, "append stream answered a call it was not sent");
            return;
        };
        let _ = waiter.send(match reply.error {
            None => Ok(reply.results),
            Some(error) => Err(call_status(error)),
        });
    }
}

/// The status a unary `Append` would have failed with.
fn call_status(error: txlog_proto::CallError) -> Status {
    let mut status = Status::new(Code::from_i32(error.code), error.message);
    if !error.leader.is_empty() {
        if let Ok(value) = error.leader.parse() {
            status.metadata_mut().insert(LEADER_METADATA_KEY, value);
        }
    }
    status
}

/// A transport failure (h2 reset or GOAWAY, connection lost) surfaces as
/// UNKNOWN or INTERNAL; to the callers it is the node being unreachable,
/// which their retry loops handle.
fn transport_status(address: &str, status: Status) -> Status {
    match status.code() {
        Code::Unknown | Code::Internal => {
            Status::unavailable(format!("append stream to {address} broke: {}", status.message()))
        }
        _ => status,
    }
}

async fn run(
    address: String,
    channel: Channel,
    open_timeout: Duration,
    credentials: Option<Arc<Credentials>>,
    mut rx: mpsc::Receiver<Queued>,
) {
    let credentials = credentials.as_deref();
    // A call taken from the queue and not sent yet: it did not fit in the
    // last message, or it was just received.
    let mut held: Option<Queued> = None;
    loop {
        let first = match held.take() {
            Some(q) => q,
            None => match rx.recv().await {
                Some(q) => q,
                None => return,
            },
        };
        let (out_tx, out_rx) = mpsc::channel::<AppendStreamRequest>(OUTBOUND_MESSAGES_MAX);
        let mut inflight = InFlight {
            next_id: 1,
            waiting: HashMap::new(),
        };
        // The first message is queued before the stream opens: tonic sends
        // the request headers and the first body frame together.
        let message;
        (message, held) = take_message(first, &mut rx, &mut inflight, credentials);
        if message.calls.is_empty() {
            // Every queued caller gave up already.
            continue;
        }
        let _ = out_tx.try_send(message);
        let mut client = LogServiceClient::new(channel.clone())
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX);
        let opening = client.append_stream(ReceiverStream::new(out_rx));
        let opened = match tokio::time::timeout(open_timeout, opening).await {
            Ok(opened) => opened.map_err(|status| transport_status(&address, status)),
            Err(_) => Err(Status::unavailable(format!(
                "append stream to {address} did not open within {open_timeout:?}"
            ))),
        };
        let mut inbound = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::debug!(%address, code = ?status.code(), msg = status.message(), "append stream did not open");
                inflight.fail_all(&status);
                continue;
            }
        };
        let broke = loop {
            // A held call leads the next message.
            if out_tx.capacity() > 0 {
                if let Some(first) = held.take() {
                    let message;
                    (message, held) = take_message(first, &mut rx, &mut inflight, credentials);
                    if !message.calls.is_empty() {
                        let _ = out_tx.try_send(message);
                    }
                    continue;
                }
            }
            tokio::select! {
                queued = rx.recv(), if out_tx.capacity() > 0 => match queued {
                    Some(first) => held = Some(first),
                    None => break None,
                },
                answer = inbound.message() => match answer {
                    Ok(Some(response)) => response.replies.into_iter().for_each(|r| inflight.answer(r)),
                    Ok(None) => break Some(Status::unavailable(format!("append stream to {address} ended"))),
                    Err(status) => break Some(status),
                },
            }
        };
        let Some(status) = broke else {
            // Every handle dropped: answer what is in flight, then stop.
            drop(out_tx);
            while !inflight.waiting.is_empty() {
                match inbound.message().await {
                    Ok(Some(response)) => response.replies.into_iter().for_each(|r| inflight.answer(r)),
                    _ => break,
                }
            }
            inflight.fail_all(&Status::unavailable("the client was dropped"));
            return;
        };
        tracing::debug!(%address, code = ?status.code(), msg = status.message(), "append stream broke");
        inflight.fail_all(&transport_status(&address, status));
    }
}

/// `first` and whatever else is queued now, up to one message's limits, as
/// one message; their reply senders are registered under fresh ids. A call
/// that would take the message past its byte limit is handed back, to lead
/// the next message.
fn take_message(
    first: Queued,
    rx: &mut mpsc::Receiver<Queued>,
    inflight: &mut InFlight,
    credentials: Option<&Credentials>,
) -> (AppendStreamRequest, Option<Queued>) {
    let mut calls = Vec::new();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(q) = next.take() {
        if q.reply.is_closed() {
            // Its caller gave up (deadline): sending it would only add work.
            if calls.len() < APPEND_STREAM_MESSAGE_CALLS_MAX {
                next = rx.try_recv().ok();
            }
            continue;
        }
        if !calls.is_empty() && bytes + q.bytes > MESSAGE_RECORD_BYTES_MAX {
            return (signed(calls, credentials), Some(q));
        }
        bytes += q.bytes;
        let id = inflight.next_id;
        inflight.next_id += 1;
        inflight.waiting.insert(id, q.reply);
        calls.push(AppendCall { id, records: q.records });
        if calls.len() < APPEND_STREAM_MESSAGE_CALLS_MAX {
            next = rx.try_recv().ok();
        }
    }
    (signed(calls, credentials), None)
}

/// A message of `calls`, with a token bound to it when there are
/// credentials. A token that cannot be issued (no randomness) leaves the
/// message unsigned, and the node's refusal says so for each call.
fn signed(calls: Vec<AppendCall>, credentials: Option<&Credentials>) -> AppendStreamRequest {
    let mut message = AppendStreamRequest { calls, token: None };
    if let Some(credentials) = credentials {
        match credentials.token(crate::methods::APPEND_STREAM, &message) {
            Ok(token) => message.token = Some(token),
            Err(err) => tracing::warn!(%err, "append stream message sent without a token"),
        }
    }
    message
}
