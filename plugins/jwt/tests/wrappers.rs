//! The server wrapper on a real tonic server, and the client wrapper forwarding tokens.

use crate::common;

use std::sync::Arc;

use common::{AUDIENCE, ISSUER, signing_key};
use micro_core::auth::{Access, Account, Resource, Rule, Rules, TokenOptions};
use micro_core::server::RunningServer;
use micro_core::wrapper::auth::{AuthLayer, ForwardTokenLayer, with_token};
use micro_core::{Auth, Client, Options, Registry, Server};
use micro_jwt::{Alg, JwtAuth, KeySet};
use micro_memory::MemoryRegistry;
use micro_testkit::greeter::v1::greeter_client::GreeterClient;
use micro_testkit::greeter::v1::greeter_server::{self, GreeterServer};
use micro_testkit::greeter::v1::{HelloReply, HelloRequest};

use micro_testkit::{Greeter, NoStream, greeter, no_stream};
use tonic::{Code, Request, Response, Status};

fn options(name: &str) -> Options {
    Options::new(name).load_from(["test"]).expect("options")
}

fn rule(id: &str, scope: &str, name: &str, endpoint: &str) -> Rule {
    Rule {
        id: id.into(),
        scope: scope.into(),
        resource: Resource::new("service", name, endpoint),
        access: Access::Grant,
        priority: 0,
    }
}

/// The greeter needs scope `greeter`; the front service any account.
fn rules() -> Rules {
    Rules::fixed(vec![
        rule("greet", "greeter", "greeter", "Greeter.SayHello"),
        rule("front", "*", "front", "*"),
    ])
    .unwrap()
}

/// A greeter that asks the `greeter` service, prefixing the caller's account id.
struct Relay {
    client: Client,
}

#[tonic::async_trait]
impl greeter_server::Greeter for Relay {
    type SayHelloStreamStream = NoStream;
    type ChatStream = NoStream;

    async fn say_hello_stream(
        &self,
        _: Request<micro_testkit::greeter::v1::StreamRequest>,
    ) -> std::result::Result<Response<NoStream>, Status> {
        no_stream()
    }

    async fn chat(
        &self,
        _: Request<tonic::Streaming<HelloRequest>>,
    ) -> std::result::Result<Response<NoStream>, Status> {
        no_stream()
    }

    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        // How a handler reads the account the AuthLayer verified.
        let who = request
            .extensions()
            .get::<Account>()
            .map_or("anonymous".to_string(), |a| a.id.clone());
        let mut greeter = GreeterClient::new(self.client.channel("greeter"));
        // ForwardTokenLayer on `client` passes the caller's token on.
        let reply = greeter.say_hello(request.into_inner()).await?;
        Ok(Response::new(HelloReply {
            message: format!("{who}: {}", reply.into_inner().message),
        }))
    }
}

struct World {
    registry: Arc<dyn Registry>,
    auth: Arc<JwtAuth>,
    rules: Rules,
    servers: Vec<RunningServer>,
}

async fn world() -> World {
    let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
    let auth = Arc::new(
        JwtAuth::new(
            KeySet::new(signing_key("k1", Alg::ES256)).unwrap(),
            ISSUER,
            AUDIENCE,
        )
        .unwrap(),
    );
    let rules = rules();
    let greeter = Server::new(options("greeter"), registry.clone())
        .descriptors(greeter::DESCRIPTORS)
        .unwrap()
        .add_service(GreeterServer::new(Greeter::default()))
        .wrap(AuthLayer::new(auth.clone(), rules.clone(), "greeter"))
        .start()
        .await
        .unwrap();
    let relay = Relay {
        client: Client::new(&options("front"), registry.clone()).wrap(ForwardTokenLayer::new()),
    };
    let front = Server::new(options("front"), registry.clone())
        .descriptors(greeter::DESCRIPTORS)
        .unwrap()
        .add_service(GreeterServer::new(relay))
        .wrap(AuthLayer::new(auth.clone(), rules.clone(), "front"))
        .start()
        .await
        .unwrap();
    World {
        registry,
        auth,
        rules,
        servers: vec![greeter, front],
    }
}

impl World {
    async fn token(&self, scopes: &[&str]) -> micro_core::auth::Token {
        let account = Account {
            id: "alice".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        self.auth
            .token(&account, &TokenOptions::default())
            .await
            .unwrap()
    }

    /// Calls `service` with `authorization` set to `bearer` (when given).
    async fn call(&self, service: &str, bearer: Option<&str>) -> Result<String, Status> {
        let client = Client::new(&options("caller"), self.registry.clone());
        let mut greeter = GreeterClient::new(client.channel(service));
        let mut request = Request::new(HelloRequest {
            name: "world".into(),
        });
        if let Some(value) = bearer {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        greeter
            .say_hello(request)
            .await
            .map(|r| r.into_inner().message)
    }

    async fn stop(self) {
        for server in self.servers {
            server.stop().await.unwrap();
        }
    }
}

fn code(result: Result<String, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn the_server_wrapper_checks_tokens_and_rules() {
    let world = world().await;
    let good = world.token(&["greeter"]).await;
    let no_scope = world.token(&["other"]).await;

    let missing = world.call("greeter", None).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated, "{missing:?}");
    assert_eq!(
        code(
            world
                .call(
                    "greeter",
                    Some(&format!("Bearer {}", no_scope.access_token))
                )
                .await
        ),
        Code::PermissionDenied
    );
    assert_eq!(
        world
            .call("greeter", Some(&format!("Bearer {}", good.access_token)))
            .await
            .unwrap(),
        "Hello world"
    );
    assert_eq!(
        world
            .call("greeter", Some(&format!("bearer {}", good.access_token)))
            .await
            .unwrap(),
        "Hello world",
        "the scheme is case-insensitive"
    );
    for (case, header) in [
        ("refresh token", format!("Bearer {}", good.refresh_token)),
        ("garbage token", "Bearer garbage".to_string()),
        ("not bearer", format!("Basic {}", good.access_token)),
        ("tampered", format!("Bearer {}x", good.access_token)),
    ] {
        let refused = world.call("greeter", Some(&header)).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{case}: {refused:?}");
    }

    // A rules change is in effect on the next call, without a restart.
    world
        .rules
        .set(vec![rule("public", "", "greeter", "Greeter.*")])
        .unwrap();
    assert_eq!(world.call("greeter", None).await.unwrap(), "Hello world");
    world.stop().await;
}

#[tokio::test]
async fn the_client_wrapper_forwards_the_callers_token() {
    let world = world().await;
    let good = world.token(&["greeter"]).await;
    let no_scope = world.token(&["other"]).await;

    // Through a handler: the front service's AuthLayer sets the task's token, its client's
    // ForwardTokenLayer sends it to the greeter, which checks it again.
    let bearer = format!("Bearer {}", good.access_token);
    assert_eq!(
        world.call("front", Some(&bearer)).await.unwrap(),
        "alice: Hello world",
        "the handler sees the account and the greeter gets the token"
    );
    assert_eq!(
        code(
            world
                .call("front", Some(&format!("Bearer {}", no_scope.access_token)))
                .await
        ),
        Code::PermissionDenied,
        "the front lets any account in; the greeter checks the forwarded token's scope"
    );
    assert_eq!(code(world.call("front", None).await), Code::Unauthenticated);

    // Outside a handler: `with_token`, or a fallback (a service account's own token).
    let client =
        Client::new(&options("caller"), world.registry.clone()).wrap(ForwardTokenLayer::new());
    let hello = || {
        let mut greeter = GreeterClient::new(client.channel("greeter"));
        async move {
            greeter
                .say_hello(HelloRequest {
                    name: "world".into(),
                })
                .await
                .map(|r| r.into_inner().message)
        }
    };
    assert_eq!(
        code(hello().await),
        Code::Unauthenticated,
        "no token in scope"
    );
    assert_eq!(
        with_token(good.access_token.clone(), hello())
            .await
            .unwrap(),
        "Hello world"
    );
    let fallback = Client::new(&options("caller"), world.registry.clone())
        .wrap(ForwardTokenLayer::new().with_fallback(good.access_token.clone()));
    let mut greeter = GreeterClient::new(fallback.channel("greeter"));
    let reply = greeter
        .say_hello(HelloRequest { name: "svc".into() })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "Hello svc");
    // The task's token wins over the fallback.
    let denied = with_token(no_scope.access_token.clone(), async {
        greeter.say_hello(HelloRequest { name: "svc".into() }).await
    })
    .await
    .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    world.stop().await;
}
