//! The Auth conformance suite of micro-core on `JwtAuth`, with no leeway so the expiry case is
//! quick. The suite takes the tokens through core's rules and decision too.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{AUDIENCE, ISSUER, signing_key};
use micro_core::Auth;
use micro_jwt::{Alg, JwtAuth, KeySet};

fn jwt(alg: Alg) -> Arc<dyn Auth> {
    let keys = KeySet::new(signing_key("conformance", alg)).expect("key set");
    Arc::new(
        JwtAuth::new(keys, ISSUER, AUDIENCE)
            .expect("jwt auth")
            .leeway(Duration::ZERO),
    )
}

micro_core::auth_conformance!(async { jwt(Alg::ES256) });

/// The same suite on an HS256 key set: the suite does not depend on the algorithm.
mod hs256 {
    use super::*;
    micro_core::auth_conformance!(async { jwt(Alg::HS256) });
}
