//! A client of the OCI distribution API (pull side): manifests and blobs over HTTP(S), with
//! anonymous, basic and bearer-token authentication (the token endpoint named by the
//! registry's `WWW-Authenticate` challenge), redirects followed (blob storage), every body
//! bounded.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::reference::{hex, Digest, Reference};
use super::ImageError;

/// Largest manifest, index or token answer read into memory.
pub const MAX_MANIFEST: usize = 4 << 20;
/// How long a request may wait for response headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a body may stall between two chunks.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;

pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Credentials for one registry (from an imagePullSecret).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, [elided])", self.username)
    }
}

/// Registries to reach over plain HTTP, extra CAs to trust for HTTPS.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// `host[:port]` of registries spoken to over plain HTTP.
    pub insecure: Vec<String>,
    /// PEM certificates trusted besides the system's roots.
    pub extra_ca_pem: Option<String>,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The pull side of the distribution API.
#[derive(Clone)]
pub struct Registry {
    http: HttpsClient,
    options: Arc<RegistryOptions>,
    /// Authorization header per (registry, repository), reused until refused.
    auth: Arc<Mutex<HashMap<(String, String), String>>>,
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parse `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`. Pure.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        params.insert(key, val.trim().to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer { realm: params.remove("realm")?, service: params.remove("service"), scope: params.remove("scope") })
    } else {
        None
    }
}

impl Registry {
    pub fn new(options: RegistryOptions) -> Result<Registry, ImageError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        if let Some(pem) = &options.extra_ca_pem {
            for cert in rustls_pemfile_certs(pem)? {
                roots.add(cert).map_err(|e| ImageError::Tls(e.to_string()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(kapp_tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ImageError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        Ok(Registry { http: client, options: Arc::new(options), auth: Arc::default() })
    }

    fn base(&self, r: &Reference) -> String {
        let host = r.api_host();
        let scheme = if self.options.insecure.iter().any(|h| h == host || h == &r.registry) { "http" } else { "https" };
        format!("{scheme}://{host}/v2/{}", r.repository)
    }

    /// The manifest (or index) `reference` names: its bytes, media type and digest. A digest
    /// in the reference is verified.
    pub async fn manifest(&self, r: &Reference, reference: &str, creds: Option<&Credentials>) -> Result<(Bytes, String, Digest), ImageError> {
        let url = format!("{}/manifests/{reference}", self.base(r));
        let resp = self.get(r, &url, MANIFEST_TYPES, creds).await?;
        let media_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").split(';').next().unwrap_or("").trim().to_string();
        let body = read_limited(resp.into_body(), MAX_MANIFEST, &url).await?;
        let digest = Digest::of(&body);
        if let Ok(want) = Digest::parse(reference) {
            if want != digest {
                return Err(ImageError::DigestMismatch { what: url, want: want.to_string(), got: digest.to_string() });
            }
        }
        Ok((body, media_type, digest))
    }

    /// Download blob `digest` of `size` bytes into `dest` (a new file), verifying size and
    /// digest. The file is synced before this returns.
    pub async fn blob_to_file(&self, r: &Reference, digest: &Digest, size: u64, creds: Option<&Credentials>, dest: &Path) -> Result<(), ImageError> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let resp = self.get(r, &url, "*/*", creds).await?;
        let io = |e: std::io::Error| ImageError::Io { path: dest.to_path_buf(), reason: e.to_string() };
        let mut file = std::fs::File::create(dest).map_err(io)?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut body = resp.into_body();
        let mut got: u64 = 0;
        loop {
            let frame = match tokio::time::timeout(STALL_TIMEOUT, body.frame()).await {
                Err(_) => return Err(ImageError::Http { url, reason: "body stalled".into() }),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(ImageError::Http { url, reason: e.to_string() }),
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                got += data.len() as u64;
                if got > size {
                    return Err(ImageError::SizeMismatch { what: url, want: size, got });
                }
                ctx.update(&data);
                file.write_all(&data).map_err(io)?;
            }
        }
        if got != size {
            return Err(ImageError::SizeMismatch { what: url, want: size, got });
        }
        let actual = format!("sha256:{}", hex(ctx.finish().as_ref()));
        if actual != digest.to_string() {
            return Err(ImageError::DigestMismatch { what: url, want: digest.to_string(), got: actual });
        }
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// A small blob (an image config) into memory, verified.
    pub async fn blob(&self, r: &Reference, digest: &Digest, creds: Option<&Credentials>) -> Result<Bytes, ImageError> {
        let url = format!("{}/blobs/{digest}", self.base(r));
        let resp = self.get(r, &url, "*/*", creds).await?;
        let body = read_limited(resp.into_body(), MAX_MANIFEST, &url).await?;
        let got = Digest::of(&body);
        if &got != digest {
            return Err(ImageError::DigestMismatch { what: url, want: digest.to_string(), got: got.to_string() });
        }
        Ok(body)
    }

    /// GET with the cached authorization; on 401 answer the challenge once and retry.
    async fn get(&self, r: &Reference, url: &str, accept: &str, creds: Option<&Credentials>) -> Result<http::Response<hyper::body::Incoming>, ImageError> {
        let key = (r.api_host().to_string(), r.repository.clone());
        let mut authorization = self.auth.lock().expect("auth cache lock").get(&key).cloned();
        for attempt in 0..2 {
            let resp = self.send_following(url, accept, authorization.as_deref()).await?;
            if resp.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp.headers().get(header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).and_then(parse_challenge);
                authorization = Some(match challenge {
                    Some(Challenge::Basic) => match creds {
                        Some(c) => basic(c),
                        None => return Err(ImageError::Unauthorized { url: url.to_string(), reason: "registry wants credentials and no imagePullSecret has any".into() }),
                    },
                    Some(Challenge::Bearer { realm, service, scope }) => {
                        let scope = scope.unwrap_or_else(|| format!("repository:{}:pull", r.repository));
                        format!("Bearer {}", self.token(&realm, service.as_deref(), &scope, creds).await?)
                    }
                    None => return Err(ImageError::Unauthorized { url: url.to_string(), reason: "401 without a usable WWW-Authenticate challenge".into() }),
                });
                continue;
            }
            if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
                self.auth.lock().expect("auth cache lock").remove(&key);
                return Err(ImageError::Unauthorized { url: url.to_string(), reason: resp.status().to_string() });
            }
            if resp.status() == StatusCode::NOT_FOUND {
                return Err(ImageError::NotFound(url.to_string()));
            }
            if !resp.status().is_success() {
                let status = resp.status();
                let text = read_limited(resp.into_body(), 4096, url).await.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
                return Err(ImageError::Http { url: url.to_string(), reason: format!("{status}: {}", text.trim()) });
            }
            if let Some(a) = &authorization {
                self.auth.lock().expect("auth cache lock").insert(key.clone(), a.clone());
            }
            return Ok(resp);
        }
        unreachable!("the loop returns on its second pass")
    }

    /// A token from the registry's token service (anonymous, or basic with credentials).
    async fn token(&self, realm: &str, service: Option<&str>, scope: &str, creds: Option<&Credentials>) -> Result<String, ImageError> {
        let mut url = format!("{realm}?scope={}", urlencode(scope));
        if let Some(s) = service {
            url.push_str(&format!("&service={}", urlencode(s)));
        }
        let resp = self.send_following(&url, "application/json", creds.map(basic).as_deref()).await?;
        if !resp.status().is_success() {
            return Err(ImageError::Unauthorized { url, reason: format!("token service answered {}", resp.status()) });
        }
        let body = read_limited(resp.into_body(), MAX_MANIFEST, &url).await?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| ImageError::Http { url: url.clone(), reason: format!("token answer: {e}") })?;
        v["token"].as_str().or(v["access_token"].as_str()).map(str::to_string).ok_or(ImageError::Unauthorized { url, reason: "token answer without a token".into() })
    }

    /// One GET, following redirects (the authorization goes only to the original host).
    async fn send_following(&self, url: &str, accept: &str, authorization: Option<&str>) -> Result<http::Response<hyper::body::Incoming>, ImageError> {
        let mut uri: Uri = url.parse().map_err(|e: http::uri::InvalidUri| ImageError::Http { url: url.to_string(), reason: e.to_string() })?;
        let origin = uri.authority().cloned();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = Request::get(uri.clone()).header(header::ACCEPT, accept).header(header::USER_AGENT, "kapp-kubelet");
            if let Some(a) = authorization.filter(|_| uri.authority() == origin.as_ref()) {
                req = req.header(header::AUTHORIZATION, a);
            }
            let req = req.body(Empty::new()).map_err(|e| ImageError::Http { url: url.to_string(), reason: e.to_string() })?;
            let resp = match tokio::time::timeout(REQUEST_TIMEOUT, self.http.request(req)).await {
                Err(_) => return Err(ImageError::Http { url: uri.to_string(), reason: "timed out".into() }),
                Ok(Err(e)) => return Err(ImageError::Http { url: uri.to_string(), reason: format!("{e:?}") }),
                Ok(Ok(r)) => r,
            };
            if resp.status().is_redirection() {
                let loc = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).ok_or(ImageError::Http { url: uri.to_string(), reason: "redirect without Location".into() })?;
                uri = resolve(&uri, loc).ok_or(ImageError::Http { url: uri.to_string(), reason: format!("bad redirect {loc:?}") })?;
                continue;
            }
            return Ok(resp);
        }
        Err(ImageError::Http { url: url.to_string(), reason: "too many redirects".into() })
    }
}

fn basic(c: &Credentials) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password)))
}

fn resolve(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(location.parse().ok()?);
    Uri::from_parts(parts).ok()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

async fn read_limited(body: hyper::body::Incoming, limit: usize, url: &str) -> Result<Bytes, ImageError> {
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(STALL_TIMEOUT, limited.collect()).await {
        Err(_) => Err(ImageError::Http { url: url.to_string(), reason: "body timed out".into() }),
        Ok(Err(e)) => Err(ImageError::Http { url: url.to_string(), reason: format!("body: {e}") }),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn rustls_pemfile_certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ImageError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| ImageError::Tls(format!("registry ca: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#),
            Some(Challenge::Bearer { realm: "https://auth.docker.io/token".into(), service: Some("registry.docker.io".into()), scope: Some("repository:library/busybox:pull,push".into()) })
        );
        assert_eq!(parse_challenge(r#"Basic realm="basic-realm""#), Some(Challenge::Basic));
        assert_eq!(parse_challenge("Bearer realm=http://x/t"), Some(Challenge::Bearer { realm: "http://x/t".into(), service: None, scope: None }));
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn redirects_and_encoding() {
        let base: Uri = "http://r:5000/v2/x/blobs/sha256:1".parse().unwrap();
        assert_eq!(resolve(&base, "/store/abc?sig=1").unwrap().to_string(), "http://r:5000/store/abc?sig=1");
        assert_eq!(resolve(&base, "https://s3/abc").unwrap().to_string(), "https://s3/abc");
        assert_eq!(urlencode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
