//! The one retry loop every call goes through: it picks the target, puts
//! the deadline on the attempt, follows leader hints and backs off.

use std::future::Future;
use std::time::Duration;

use tonic::Code;
use tonic::Status;

use crate::client::Route;
use crate::client::Slot;
use crate::error::is_transient;
use crate::normalize_address;
use crate::Client;
use crate::ClientError;
use crate::ClientOptions;
use crate::LEADER_METADATA_KEY;

/// Redirects one call follows at once; further hints wait the backoff first,
/// so leaders that name each other (stale views during an election) cannot
/// spin a call through its attempts without pausing.
pub const LEADER_REDIRECTS_MAX: u32 = 4;

/// Where a call goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target<'a> {
    /// The leader: the last one seen, following `txlog-leader` hints, else
    /// the listed nodes in turn (members forward admin calls to the leader).
    Leader,
    /// This node (a normalised address) and no other.
    Node(&'a str),
}

/// Which failures a call tries again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Any transient failure: the call is idempotent (reads; appends, by txid).
    Transient,
    /// Only `UNAVAILABLE`, which a node answers before it changes anything:
    /// membership changes, which may have happened when the answer was lost.
    Unavailable,
    /// No failure: one attempt, the caller wants this node's answer.
    Never,
}

impl Retry {
    fn retries(self, code: Code) -> bool {
        match self {
            Retry::Transient => is_transient(code),
            Retry::Unavailable => code == Code::Unavailable,
            Retry::Never => false,
        }
    }
}

/// How the deadline applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// One request, one answer: the deadline (grpc-timeout, which tonic
    /// also enforces on this side) covers the whole call.
    Unary,
    /// An answer stream that lives as long as the caller reads it: the
    /// deadline covers opening it, here, and is not sent to the server, for
    /// whom a grpc-timeout would bound the whole stream.
    Stream,
}

/// One call: where it goes, what it retries, and its deadline per attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub name: &'static str,
    /// The gRPC method a token is issued for, when the client has
    /// credentials; `None` when the call signs its own messages (the
    /// append stream).
    pub method: Option<&'static str>,
    pub target: Target<'a>,
    pub retry: Retry,
    pub shape: Shape,
    pub deadline: Duration,
}

/// Pauses between attempts: from `backoff_initial`, doubling up to `backoff_max`.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(options: &ClientOptions) -> Self {
        Backoff {
            next: options.backoff_initial,
            max: options.backoff_max,
        }
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

/// The leader a status names, if it is an address other than `asked`.
fn leader_hint(status: &Status, asked: &str) -> Option<String> {
    let hint = status.metadata().get(LEADER_METADATA_KEY)?.to_str().ok()?;
    normalize_address(hint).ok().filter(|h| h != asked)
}

impl Client {
    /// Run `rpc` with `message` as `call` says, retrying on another node or
    /// the hinted leader until it succeeds, fails for good or runs out of
    /// attempts.
    pub(crate) async fn call<M, T, F, Fut>(&self, call: Call<'_>, message: M, mut rpc: F) -> Result<T, ClientError>
    where
        M: Clone + prost::Message,
        F: FnMut(Route, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let attempts_max = match call.retry {
            Retry::Never => 1,
            Retry::Transient | Retry::Unavailable => self.options.attempts_max,
        };
        let mut backoff = Backoff::new(&self.options);
        let mut last = Status::unavailable("no attempt made");
        let mut redirects = 0;
        for attempt in 1..=attempts_max {
            let route = match call.target {
                Target::Leader => self.leader_route()?,
                Target::Node(address) => Route {
                    address: address.to_string(),
                    channel: self.channel(address)?,
                    slot: Slot::Named,
                },
            };
            let (address, slot) = (route.address.clone(), route.slot);
            let mut request = tonic::Request::new(message.clone());
            if let (Some(credentials), Some(method)) = (&self.credentials, call.method) {
                credentials.sign(&mut request, method).map_err(ClientError::Status)?;
            }
            let status = match attempt_once(&call, route, request, &mut rpc).await {
                Ok(value) => return Ok(value),
                Err(status) if !call.retry.retries(status.code()) => return Err(ClientError::Status(status)),
                Err(status) => status,
            };
            let hint = match call.target {
                Target::Leader => leader_hint(&status, &address),
                Target::Node(_) => None,
            };
            tracing::debug!(
                call = call.name, attempt, address = %address, code = ?status.code(),
                msg = status.message(), hint = ?hint, "retrying"
            );
            last = status;
            if hint.is_some_and(|leader| self.follow_hint(&leader)) {
                redirects += 1;
                if redirects <= LEADER_REDIRECTS_MAX {
                    continue;
                }
            } else {
                self.move_on(slot);
            }
            if attempt < attempts_max {
                backoff.pause().await;
            }
        }
        Err(ClientError::Exhausted {
            attempts: attempts_max,
            last,
        })
    }
}

/// One attempt of `call` at `route` with `request` (a fresh token each
/// attempt), under its deadline.
async fn attempt_once<M, T, F, Fut>(
    call: &Call<'_>,
    route: Route,
    mut request: tonic::Request<M>,
    rpc: &mut F,
) -> Result<T, Status>
where
    F: FnMut(Route, tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    match call.shape {
        Shape::Unary => {
            request.set_timeout(call.deadline);
            rpc(route, request).await
        }
        Shape::Stream => match tokio::time::timeout(call.deadline, rpc(route, request)).await {
            Ok(result) => result,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{}: the stream did not open within {:?}",
                call.name, call.deadline
            ))),
        },
    }
}
