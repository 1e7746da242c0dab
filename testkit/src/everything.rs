//! The `everything` fixture: a service whose messages have every shape of the proto3 JSON
//! mapping (`proto/testing/v1/everything.proto`) and whose methods echo what they are sent, so
//! a gateway test that calls them exercises the transcoding both ways.

use std::sync::Arc;

use micro_core::server::RunningServer;
use micro_core::{Registry, Server};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::testing::v1::everything_server::{self, EverythingServer};
use crate::testing::v1::{CountRequest, Known, Scalars, Shapes, Tree};
use crate::{test_options, testing};

/// The most scalars one `Count` call streams.
const MAX_COUNT: u32 = 100;

/// The handler of `testing.v1.Everything`: every unary method replies with its request.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoEverything;

/// The replies of `Count` and `Chat`.
type ScalarStream = ReceiverStream<Result<Scalars, Status>>;

#[tonic::async_trait]
impl everything_server::Everything for EchoEverything {
    async fn echo(&self, request: Request<Shapes>) -> Result<Response<Shapes>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn echo_scalars(&self, request: Request<Scalars>) -> Result<Response<Scalars>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn echo_tree(&self, request: Request<Tree>) -> Result<Response<Tree>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn echo_known(&self, request: Request<Known>) -> Result<Response<Known>, Status> {
        Ok(Response::new(request.into_inner()))
    }

    async fn ping(&self, _: Request<()>) -> Result<Response<()>, Status> {
        Ok(Response::new(()))
    }

    type CountStream = ScalarStream;

    async fn count(
        &self,
        request: Request<CountRequest>,
    ) -> Result<Response<ScalarStream>, Status> {
        let count = request.into_inner().count;
        if count > MAX_COUNT {
            return Err(Status::invalid_argument(format!(
                "count must be at most {MAX_COUNT}, got {count}"
            )));
        }
        let (replies, stream) = mpsc::channel(16);
        tokio::spawn(async move {
            for i in 1..=count {
                let reply = Scalars {
                    int32: i32::try_from(i).unwrap_or(i32::MAX),
                    ..Scalars::default()
                };
                if replies.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }

    type ChatStream = ScalarStream;

    async fn chat(
        &self,
        request: Request<Streaming<Scalars>>,
    ) -> Result<Response<ScalarStream>, Status> {
        let mut requests = request.into_inner();
        let (replies, stream) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = requests.message() => next,
                    () = replies.closed() => return,
                };
                let (reply, last) = match next {
                    Ok(Some(scalars)) => (Ok(scalars), false),
                    Ok(None) => return,
                    Err(status) => (Err(status), true),
                };
                if replies.send(reply).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

/// Starts the echo service as `name`, registered in `registry` with [`test_options`] and the
/// `testing.v1` descriptors (served by reflection, comments included).
pub async fn start_everything(registry: Arc<dyn Registry>, name: &str) -> RunningServer {
    Server::new(test_options(name), registry)
        .descriptors(testing::DESCRIPTORS)
        .expect("testing.v1 descriptors")
        .add_service(EverythingServer::new(EchoEverything))
        .start()
        .await
        .expect("start the everything service")
}
