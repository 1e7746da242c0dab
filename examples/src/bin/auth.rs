//! Accounts and a protected greeter: `Accounts.Login(username, password)` answers an access and
//! a refresh token (passwords are kept as argon2 hashes), `Accounts.Refresh(refresh_token)` a
//! new pair, `Accounts.Logout` ends the caller's session, and `Greeter.SayHello` needs the scope
//! `greeter`. The Auth plugin is chosen by name (`--auth`, default `jwt` here, whose keys come
//! from `MICRO_AUTH_JWT_*`: see plugins/jwt/README.md); rules from `--rules <file>`
//! (`examples/auth/rules.toml`), reloaded when the file changes. Demo accounts:
//! alice/wonderland (scope `greeter`), bob/builder (no scope).
//!
//! With `--auth-sessions` the tokens are kept to one live pair per account in the Store of
//! `--store` (shared with the gateway, e.g. `--store redis`): a new login or a refresh ends the
//! older pair, and Logout all of them. Without it, Logout answers FAILED_PRECONDITION.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use clap::Parser;
use micro_core::Error;
use micro_core::auth::{Account, DEFAULT_POLL, Rules, TokenOptions};
use micro_core::options::{Options, ServiceFlags};
use micro_core::wrapper::auth::AuthLayer;
use micro_core::{Auth, Server};
use micro_examples::auth::v1::accounts_server::{Accounts, AccountsServer};
use micro_examples::auth::v1::{
    LoginRequest, LogoutReply, LogoutRequest, RefreshRequest, TokenPair,
};
use micro_examples::greeter::v1::greeter_server::GreeterServer;
use micro_examples::{Greeter, auth, catalog, greeter};
use tonic::{Request, Response, Status};

#[derive(Parser)]
#[command(
    name = "auth",
    about = "Login/Refresh/Logout for JWT pairs, and a greeter that needs a scope"
)]
struct Cli {
    #[command(flatten)]
    _service: ServiceFlags,
    /// Access rules, JSON or TOML (reloaded when the file changes)
    #[arg(long, value_name = "PATH")]
    rules: std::path::PathBuf,
}

/// An account and its password hash (PHC string).
struct User {
    hash: String,
    scopes: Vec<String>,
}

struct AccountService {
    auth: Arc<dyn Auth>,
    users: HashMap<String, User>,
}

impl AccountService {
    fn demo(auth: Arc<dyn Auth>) -> Result<Self, argon2::password_hash::Error> {
        let mut users = HashMap::new();
        for (name, password, scopes) in [
            ("alice", "wonderland", vec!["greeter"]),
            ("bob", "builder", vec![]),
        ] {
            let salt = SaltString::encode_b64(&fastrand_salt())?;
            let hash = Argon2::default()
                .hash_password(password.as_bytes(), &salt)?
                .to_string();
            users.insert(
                name.to_string(),
                User {
                    hash,
                    scopes: scopes.into_iter().map(String::from).collect(),
                },
            );
        }
        Ok(AccountService { auth, users })
    }
}

fn fastrand_salt() -> [u8; 16] {
    std::array::from_fn(|_| fastrand::u8(..))
}

fn pair(token: micro_core::auth::Token) -> TokenPair {
    TokenPair {
        access_token: token.access_token,
        refresh_token: token.refresh_token,
        expiry: i64::try_from(token.expiry).unwrap_or(i64::MAX),
    }
}

#[tonic::async_trait]
impl Accounts for AccountService {
    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<TokenPair>, Status> {
        let LoginRequest { username, password } = request.into_inner();
        let refused = || Status::unauthenticated("invalid username or password");
        let user = self.users.get(&username).ok_or_else(refused)?;
        let hash = PasswordHash::new(&user.hash)
            .map_err(|_| Status::internal("stored password hash is malformed"))?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .map_err(|_| refused())?;
        let account = Account {
            id: username,
            kind: "user".into(),
            scopes: user.scopes.clone(),
            ..Default::default()
        };
        let token = self
            .auth
            .token(&account, &TokenOptions::default())
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pair(token)))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        let token = self
            .auth
            .refresh(&request.into_inner().refresh_token)
            .await
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        Ok(Response::new(pair(token)))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutReply>, Status> {
        // The AuthLayer hands the verified account of the caller's token to the handler.
        let account = request
            .extensions()
            .get::<Account>()
            .ok_or_else(|| Status::unauthenticated("logout needs a valid access token"))?;
        self.auth.revoke(&account.id).await.map_err(|e| match e {
            Error::Invalid { .. } => Status::failed_precondition(e.to_string()),
            other => Status::unavailable(other.to_string()),
        })?;
        tracing::info!(account = %account.id, "logged out");
        Ok(Response::new(LogoutReply {
            account: account.id.clone(),
        }))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    micro_examples::run_binary("auth", run()).await
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // `jwt` unless the file, the environment (MICRO_AUTH) or --auth names another.
    let (options, cli) = Options::new("auth").set("auth", "jwt").load_with::<Cli>()?;
    // Sessions (--auth-sessions) are kept in the Store of --store; Redis in production.
    let catalog = catalog();
    let registry = catalog.registry(&options).await?;
    let auth: Arc<dyn Auth> = catalog.auth(&options).await?.ok_or(
        "the auth example issues tokens: it needs an Auth plugin (--auth jwt), not `none`",
    )?;
    let rules = Rules::watch_file(&cli.rules, DEFAULT_POLL)?;
    // Listening before start: a SIGTERM right after registration still stops gracefully.
    let signal = micro_core::server::shutdown_signal();
    let running = Server::new(options.clone(), registry)
        .descriptors(greeter::DESCRIPTORS)?
        .descriptors(auth::DESCRIPTORS)?
        .add_service(AccountsServer::new(
            AccountService::demo(auth.clone())
                .map_err(|e| format!("hashing the demo passwords: {e}"))?,
        ))
        .add_service(GreeterServer::new(Greeter::default()))
        .wrap(AuthLayer::new(auth, rules, &options.server_name))
        .start()
        .await?;
    println!(
        "auth: service {} listening on {} (auth {}{}, rules {})",
        options.server_name,
        running.address(),
        options.auth,
        if options.auth_sessions {
            format!(", sessions in the {} store", options.store)
        } else {
            String::new()
        },
        cli.rules.display()
    );
    Ok(running.stop_on(signal).await?)
}
