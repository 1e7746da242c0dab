//! `GET /docs`: an interactive page over `/openapi.json` (Swagger UI, "try it out" on), and
//! `GET /docs/{asset}`: its script, styles and icon.
//!
//! Everything is compiled into the binary from `api-gateway/assets/` (Swagger UI is vendored
//! from npm there, see its README; `scripts/update-docs-assets` refreshes it), so the page works
//! offline and loads nothing from outside the gateway, which its `Content-Security-Policy` also
//! enforces: scripts, styles and requests from the gateway only, no inline script.
//!
//! Caching: the page names each asset by its content hash (`swagger-ui-bundle.<hash>.js`), and
//! those names are served as immutable; the page and the plain names (`swagger-ui-bundle.js`)
//! are `no-cache`. Every answer carries a strong `ETag`, the same content hash.

use std::sync::OnceLock;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};

use crate::error::ApiError;

/// What the page may load and do: everything from the gateway itself and nothing else. Styles
/// may be inline (Swagger UI sets some), images may be `data:` (its icons are, in its CSS).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// The page, with `docs/{asset}` references that are replaced by the hashed names.
const PAGE: &str = include_str!("../assets/index.html");

/// One file served under `/docs/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $file:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../assets/", $file)),
        }
    };
}

const ASSETS: [Asset; 6] = [
    asset!(
        "swagger-ui-bundle.js",
        "swagger-ui/swagger-ui-bundle.js",
        "text/javascript; charset=utf-8"
    ),
    asset!(
        "swagger-ui.css",
        "swagger-ui/swagger-ui.css",
        "text/css; charset=utf-8"
    ),
    // The bundle's first line points at its libraries' licence notices by this name.
    asset!(
        "swagger-ui-bundle.js.LICENSE.txt",
        "swagger-ui/swagger-ui-bundle.js.LICENSE.txt",
        "text/plain; charset=utf-8"
    ),
    asset!(
        "favicon-32x32.png",
        "swagger-ui/favicon-32x32.png",
        "image/png"
    ),
    asset!("init.js", "init.js", "text/javascript; charset=utf-8"),
    asset!("docs.css", "docs.css", "text/css; charset=utf-8"),
];

/// The page and assets with their hashes, computed on the first request.
struct Served {
    page: String,
    page_etag: HeaderValue,
    assets: Vec<Hashed>,
}

struct Hashed {
    asset: &'static Asset,
    /// `stem.<hash>.ext`.
    hashed_name: String,
    etag: HeaderValue,
}

/// The page (`asset` none) or one of its bundled files; 404 for any other name.
pub(crate) fn serve(asset: Option<&str>) -> Result<Response, ApiError> {
    let served = served();
    let Some(name) = asset else {
        return Ok(respond(
            "text/html; charset=utf-8",
            REVALIDATE,
            &served.page_etag,
            Bytes::from_static(served.page.as_bytes()),
        ));
    };
    let (hashed, cache) = served
        .assets
        .iter()
        .find_map(|h| {
            if h.asset.name == name {
                Some((h, REVALIDATE))
            } else if h.hashed_name == name {
                Some((h, IMMUTABLE))
            } else {
                None
            }
        })
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no docs asset `{name}`: the page is GET /docs, and it loads its own files"
            ))
        })?;
    Ok(respond(
        hashed.asset.content_type,
        cache,
        &hashed.etag,
        Bytes::from_static(hashed.asset.body),
    ))
}

fn served() -> &'static Served {
    static SERVED: OnceLock<Served> = OnceLock::new();
    SERVED.get_or_init(|| {
        let assets: Vec<Hashed> = ASSETS
            .iter()
            .map(|asset| {
                let hash = hash(asset.body);
                let hashed_name = match asset.name.rsplit_once('.') {
                    Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
                    None => format!("{}.{hash}", asset.name),
                };
                Hashed {
                    asset,
                    hashed_name,
                    etag: etag(&hash),
                }
            })
            .collect();
        let mut page = PAGE.to_string();
        for hashed in &assets {
            page = page.replace(
                &format!("\"docs/{}\"", hashed.asset.name),
                &format!("\"docs/{}\"", hashed.hashed_name),
            );
        }
        Served {
            page_etag: etag(&hash(page.as_bytes())),
            page,
            assets,
        }
    })
}

fn respond(
    content_type: &'static str,
    cache: &'static str,
    etag: &HeaderValue,
    body: Bytes,
) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::ETAG, etag.clone());
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// FNV-1a, 64 bits, in hex: stable across builds and platforms, enough to tell versions apart.
fn hash(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn etag(hash: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{hash}\"")).expect("a hex ETag is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `docs/...` references of a page.
    fn references(page: &str) -> Vec<&str> {
        page.split("\"docs/")
            .skip(1)
            .filter_map(|rest| rest.split_once('"').map(|(name, _)| name))
            .collect()
    }

    fn header(response: &Response, name: header::HeaderName) -> &str {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    #[test]
    fn the_page_names_every_file_it_loads_by_its_hashed_name() {
        let raw = references(PAGE);
        assert!(raw.len() >= 4, "{raw:?}");
        let page = &served().page;
        let hashed = references(page);
        assert_eq!(hashed.len(), raw.len());
        for name in hashed {
            let response = serve(Some(name)).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(
                header(&response, header::CACHE_CONTROL),
                IMMUTABLE,
                "{name}"
            );
            assert!(
                !ASSETS.iter().any(|a| a.name == name),
                "{name} is not hashed"
            );
        }
    }

    #[test]
    fn assets_have_their_types_and_unknown_names_are_404() {
        let page = serve(None).unwrap();
        assert_eq!(
            header(&page, header::CONTENT_TYPE),
            "text/html; charset=utf-8"
        );
        assert_eq!(header(&page, header::CACHE_CONTROL), REVALIDATE);
        assert!(header(&page, header::CONTENT_SECURITY_POLICY).contains("script-src 'self';"));
        for (name, content_type) in [
            ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
            ("init.js", "text/javascript; charset=utf-8"),
            ("swagger-ui.css", "text/css; charset=utf-8"),
            ("favicon-32x32.png", "image/png"),
        ] {
            let response = serve(Some(name)).unwrap();
            assert_eq!(header(&response, header::CONTENT_TYPE), content_type);
            assert_eq!(header(&response, header::CACHE_CONTROL), REVALIDATE);
            assert!(header(&response, header::ETAG).starts_with('"'));
        }
        for unknown in [
            "index.html",
            "swagger-ui-bundle.js.map",
            "swagger-ui-bundle.0000000000000000.js",
            "swagger-ui-standalone-preset.js",
        ] {
            assert_eq!(
                serve(Some(unknown)).unwrap_err().status,
                StatusCode::NOT_FOUND,
                "{unknown}"
            );
        }
    }

    #[test]
    fn nothing_outside_the_gateway_and_no_inline_script() {
        for (name, text) in [
            ("index.html", PAGE),
            ("init.js", include_str!("../assets/init.js")),
            ("docs.css", include_str!("../assets/docs.css")),
        ] {
            assert!(!text.contains("http://"), "{name} names a URL");
            assert!(!text.contains("https://"), "{name} names a URL");
        }
        for script in PAGE.split("<script").skip(1) {
            let (attributes, rest) = script.split_once('>').expect("a closed tag");
            assert!(attributes.contains(" src="), "inline script: {script}");
            assert!(rest.starts_with("</script>"), "inline script: {script}");
        }
    }
}
