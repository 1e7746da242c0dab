//! Reading everything under a prefix in pages, all at one revision.
//!
//! One range request for a whole prefix answers with one message as large as everything under
//! it, and tonic refuses to decode a message over 4 MiB: issue #17's registry of 10 000 nodes
//! (4.2 MB of JSON) could not be listed, nor watched. Pages keep every message small, and
//! reading each page at the first page's revision keeps the listing one consistent snapshot,
//! which a watch can resume right after.

use etcd_client::{Client, Error, GetOptions, KeyValue};

/// Keys asked for per page: kubectl's default chunk size. A registry node record is 0.4–2 KiB,
/// so a page is 0.2–1 MiB, far from the 4 MiB limit, and 10 000 nodes take 20 round trips.
/// Larger values (store records hold anything up to etcd's 1.5 MiB request limit) shrink the
/// page: see [`list`].
pub(crate) const PAGE: i64 = 500;

/// Keys asked for per page when only keys are read: a registry key is under 200 bytes, so a
/// page stays under 2 MiB, and 100 000 nodes take 10 round trips. (etcd 3.4 walks the rest of
/// the range on every page, so fewer pages are much quicker there.)
const KEYS_PAGE: i64 = 10_000;

/// Every key-value under `prefix` in key order, and the revision they were all read at.
///
/// Each page after the first starts just after the last key read (`last + "\0"`) and reads at
/// the first page's revision. A page the client refuses as too large is asked again at half the
/// size: one key always fits, as etcd refuses to store a value larger than a request. If etcd
/// compacts that revision away before the last page, the listing fails with etcd's error; the
/// callers list again.
pub(crate) async fn list(client: &Client, prefix: &str) -> Result<(Vec<KeyValue>, i64), Error> {
    read(client, prefix, false).await
}

/// As [`list`], keys only: each value is empty.
pub(crate) async fn list_keys(
    client: &Client,
    prefix: &str,
) -> Result<(Vec<KeyValue>, i64), Error> {
    read(client, prefix, true).await
}

async fn read(
    client: &Client,
    prefix: &str,
    keys_only: bool,
) -> Result<(Vec<KeyValue>, i64), Error> {
    let mut client = client.clone();
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut limit = if keys_only { KEYS_PAGE } else { PAGE };
    // 0 reads the newest revision: the first page's, which the others then read at.
    let mut revision = 0;
    let mut kvs = Vec::new();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(limit)
            .with_revision(revision);
        if keys_only {
            options = options.with_keys_only();
        }
        let mut page = match client.get(from.clone(), Some(options)).await {
            Ok(page) => page,
            Err(e) if limit > 1 && too_large(&e) => {
                limit /= 2;
                continue;
            }
            Err(e) => return Err(e),
        };
        if revision == 0 {
            revision = page.header().map(|h| h.revision()).unwrap_or_default();
        }
        let batch = page.take_kvs();
        // The smallest key after the last one read, when etcd has more.
        let next = match batch.last() {
            Some(last) if page.more() => Some([last.key(), b"\0"].concat()),
            _ => None,
        };
        kvs.extend(batch);
        match next {
            Some(next) => from = next,
            None => return Ok((kvs, revision)),
        }
    }
}

/// The end of the range of keys starting with `prefix` (etcd's own rule): the prefix with its
/// last byte below 0xff incremented; `"\0"` (no end) when every byte is 0xff.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Whether the client refused an answer as larger than its message limit. tonic says so only
/// in the message, with the code OUT_OF_RANGE that etcd also uses for a compacted revision.
fn too_large(error: &Error) -> bool {
    let Error::GRpcStatus(status) = error else {
        return false;
    };
    status.message().contains("message length too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_as_etcd_computes_them() {
        assert_eq!(prefix_end(b"/micro/registry/"), b"/micro/registry0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }
}
