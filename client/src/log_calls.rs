//! `LogService` calls: append, read, lookup, subscribe.

use tonic::transport::Channel;
use tonic::Code;
use tonic::Status;
use txlog_proto::log_service_client::LogServiceClient;
use txlog_proto::AppendCall;
use txlog_proto::AppendRequest;
use txlog_proto::AppendResult;
use txlog_proto::AppendStreamRequest;
use txlog_proto::CommittedRecord;
use txlog_proto::LookupRequest;
use txlog_proto::ReadRequest;
use txlog_proto::ReadResponse;
use txlog_proto::Record;
use txlog_proto::SubscribeRequest;

use crate::methods;
use crate::normalize_address;
use crate::retry::Call;
use crate::retry::Retry;
use crate::retry::Shape;
use crate::retry::Target;
use crate::wall_clock_ns;
use crate::Client;
use crate::ClientError;
use crate::MESSAGE_BYTES_MAX;

fn log_service(channel: Channel) -> LogServiceClient<Channel> {
    LogServiceClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

/// Refuse a request of `bytes` over the message limit here, with the status
/// a node would give: tonic's own send limit fails mid-stream and surfaces
/// as an opaque h2 INTERNAL error.
fn check_message_bytes(bytes: usize) -> Result<(), ClientError> {
    if bytes > MESSAGE_BYTES_MAX {
        return Err(ClientError::Status(Status::resource_exhausted(format!(
            "request message too large: found {bytes} bytes, the limit is: {MESSAGE_BYTES_MAX} bytes"
        ))));
    }
    Ok(())
}

impl Client {
    /// A leader-bound, idempotent unary log call.
    fn log_call(&self, name: &'static str, method: &'static str) -> Call<'static> {
        Call {
            name,
            method: Some(method),
            target: Target::Leader,
            retry: Retry::Transient,
            shape: Shape::Unary,
            deadline: self.options.rpc_timeout,
        }
    }

    /// Append records; one result per record, in order. Appends from all
    /// callers of this client (and its clones) share one stream per node
    /// (`LogService.AppendStream`), so concurrent appends travel together.
    pub async fn append(&self, records: Vec<Record>) -> Result<Vec<AppendResult>, ClientError> {
        // Measured as the call alone in a stream message, its largest form.
        let alone = AppendStreamRequest {
            calls: vec![AppendCall { id: u64::MAX, records }],
            token: None,
        };
        let bytes = prost::Message::encoded_len(&alone);
        check_message_bytes(bytes)?;
        let records = alone.calls.into_iter().next().map(|c| c.records).unwrap_or_default();
        let deadline = self.options.rpc_timeout;
        // The stream signs each message it sends, not this call.
        let call = Call {
            method: None,
            ..self.log_call("append", methods::APPEND_STREAM)
        };
        self.call(call, AppendRequest { records }, |route, request| {
            let session = self.append_session(&route);
            async move {
                match tokio::time::timeout(deadline, session.append(request.into_inner().records, bytes)).await {
                    Ok(reply) => reply,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "append not answered within {deadline:?}"
                    ))),
                }
            }
        })
        .await
    }

    /// Append records with one unary `Append` call per attempt (no stream).
    pub async fn append_unary(&self, records: Vec<Record>) -> Result<Vec<AppendResult>, ClientError> {
        let request = AppendRequest { records };
        check_message_bytes(prost::Message::encoded_len(&request))?;
        self.call(
            self.log_call("append", methods::APPEND),
            request,
            |route, request| async move {
                log_service(route.channel)
                    .append(request)
                    .await
                    .map(|r| r.into_inner().results)
            },
        )
        .await
    }

    /// Append one record.
    pub async fn append_one(&self, channel: &str, txid: &[u8], payload: &[u8]) -> Result<AppendResult, ClientError> {
        let record = Record {
            txid: txid.to_vec().into(),
            channel: channel.to_string(),
            payload: payload.to_vec().into(),
            client_time_ns: wall_clock_ns(),
        };
        let mut results = self.append(vec![record]).await?;
        results
            .pop()
            .ok_or_else(|| ClientError::Status(Status::internal("append returned no result")))
    }

    /// Read from the leader (linearizable) or, with `stale`, from any node.
    pub async fn read(
        &self,
        from_seq: u64,
        limit: u32,
        channel: Option<&str>,
        stale: bool,
    ) -> Result<ReadResponse, ClientError> {
        let request = ReadRequest {
            from_seq,
            limit,
            channel: channel.map(str::to_string),
            stale,
        };
        self.call(
            self.log_call("read", methods::READ),
            request,
            |route, request| async move { log_service(route.channel).read(request).await.map(|r| r.into_inner()) },
        )
        .await
    }

    /// Read from one specific node without retries (stale reads per node).
    pub async fn read_at(
        &self,
        address: &str,
        from_seq: u64,
        limit: u32,
        stale: bool,
    ) -> Result<ReadResponse, ClientError> {
        let address = normalize_address(address)?;
        let call = Call {
            target: Target::Node(&address),
            retry: Retry::Never,
            ..self.log_call("read_at", methods::READ)
        };
        let request = ReadRequest {
            from_seq,
            limit,
            channel: None,
            stale,
        };
        self.call(call, request, |route, request| async move {
            log_service(route.channel).read(request).await.map(|r| r.into_inner())
        })
        .await
    }

    /// The committed record with `txid`, if there is one.
    pub async fn lookup(&self, txid: &[u8], stale: bool) -> Result<Option<CommittedRecord>, ClientError> {
        let request = LookupRequest {
            txid: txid.to_vec().into(),
            stale,
        };
        let result = self
            .call(
                self.log_call("lookup", methods::LOOKUP),
                request,
                |route, request| async move {
                    log_service(route.channel)
                        .lookup(request)
                        .await
                        .map(|r| r.into_inner().record)
                },
            )
            .await;
        match result {
            Err(ClientError::Status(s)) if s.code() == Code::NotFound => Ok(None),
            other => other,
        }
    }

    /// Stream committed records from `from_seq`, then live ones, from the leader.
    pub async fn subscribe(
        &self,
        from_seq: u64,
        channel: Option<&str>,
    ) -> Result<tonic::Streaming<CommittedRecord>, ClientError> {
        let call = Call {
            shape: Shape::Stream,
            ..self.log_call("subscribe", methods::SUBSCRIBE)
        };
        let request = SubscribeRequest {
            from_seq,
            channel: channel.map(str::to_string),
        };
        self.call(call, request, |route, request| async move {
            log_service(route.channel)
                .subscribe(request)
                .await
                .map(|r| r.into_inner())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An append over the message limit fails at once with the status a
    /// node would give, without a connection (nothing listens on port 1).
    #[tokio::test]
    async fn oversize_append_is_refused_locally() {
        let client = Client::connect("127.0.0.1:1").unwrap();
        let payload = vec![0u8; MESSAGE_BYTES_MAX];
        let err = client.append_one("orders", b"big", &payload).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
        assert!(err.to_string().contains(&MESSAGE_BYTES_MAX.to_string()), "{err}");
    }
}
