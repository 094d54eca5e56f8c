//! The manager: which domains are held, ordering and renewing their
//! certificates, and the lookups a product's listeners make (certificate by
//! SNI, challenge answers).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use instant_acme::{Account, AuthorizationStatus, Identifier, NewOrder, OrderStatus, RetryPolicy};
use rcgen::{CertificateParams, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::{Notify, OnceCell};

use crate::certs::{self, Entry, Issued, Status};
use crate::challenge::{Challenges, Published, HTTP01_PREFIX};
use crate::config::{AcmeConfig, ChallengeKind, Domain};
use crate::error::Error;
use crate::{account, store};

/// How often [`Manager::run`] looks again when nothing is due sooner: a
/// clock that jumps, or a file replaced by hand, is noticed within this.
const IDLE_CHECK: Duration = Duration::from_secs(3600);

/// Certificates for a set of domains, from one ACME directory.
///
/// Share it behind an [`Arc`]: the product's TLS listener resolves
/// certificates through it ([`ResolvesServerCert`], [`Manager::server_config`]),
/// its HTTP listener answers [`Manager::http01_response`], and one task runs
/// [`Manager::run`].
pub struct Manager {
    config: AcmeConfig,
    entries: RwLock<BTreeMap<Domain, Entry>>,
    challenges: Challenges,
    account: OnceCell<Account>,
    changed: Notify,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("directory", &self.config.directory)
            .field("domains", &self.domains())
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// A manager with no domains yet; creates the state directory (0700).
    /// Nothing is sent to the CA until a certificate is ordered.
    pub fn new(config: AcmeConfig) -> Result<Self, Error> {
        store::private_dir(&config.state_dir)?;
        Ok(Self {
            config,
            entries: RwLock::default(),
            challenges: Challenges::default(),
            account: OnceCell::new(),
            changed: Notify::new(),
        })
    }

    fn read<T>(&self, f: impl FnOnce(&BTreeMap<Domain, Entry>) -> T) -> T {
        f(&self.entries.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write<T>(&self, f: impl FnOnce(&mut BTreeMap<Domain, Entry>) -> T) -> T {
        f(&mut self.entries.write().unwrap_or_else(PoisonError::into_inner))
    }

    /// Holds `domain`, proven with `kind`: its stored certificate is loaded
    /// if there is one, otherwise a placeholder is served and the domain is
    /// due for ordering at once. Adding a held domain only changes its kind.
    pub fn add_domain(&self, domain: &Domain, kind: ChallengeKind) -> Result<Status, Error> {
        if let Some(status) = self.write(|entries| {
            entries.get_mut(domain).map(|entry| {
                entry.kind = kind;
                entry.status.clone()
            })
        }) {
            return Ok(status);
        }
        let issued = certs::load(&self.config.state_dir, domain)?;
        let placeholder = certs::placeholder(domain)?;
        let status = match &issued {
            Some(issued) => Status::Valid {
                not_after: issued.not_after,
            },
            None => Status::Pending,
        };
        let entry = Entry {
            kind,
            issued,
            placeholder,
            status: status.clone(),
            ordering: Arc::default(),
            last_issued: None,
        };
        self.write(|entries| {
            entries
                .entry(domain.clone())
                .or_insert(entry)
                .status
                .clone()
        });
        self.changed.notify_one();
        Ok(status)
    }

    /// Stops holding `domain` (its files stay).
    pub fn remove_domain(&self, domain: &Domain) {
        self.write(|entries| entries.remove(domain));
    }

    /// The domains held.
    pub fn domains(&self) -> Vec<Domain> {
        self.read(|entries| entries.keys().cloned().collect())
    }

    /// Where `domain` stands, if it is held.
    pub fn status(&self, domain: &Domain) -> Option<Status> {
        self.read(|entries| entries.get(domain).map(|e| e.status.clone()))
    }

    fn lookup(server_name: &str) -> Option<Domain> {
        Domain::parse(server_name).ok()
    }

    /// The certificate to serve for a server name: the issued one, or the
    /// placeholder while none is. `None` for names not held.
    pub fn certified_key(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let domain = Self::lookup(server_name)?;
        self.read(|entries| entries.get(&domain).map(Entry::serving))
    }

    /// Whether an issued certificate exists for `host`: the moment a product
    /// starts redirecting plain HTTP to HTTPS for it.
    pub fn has_certificate(&self, host: &str) -> bool {
        let Some(domain) = Self::lookup(host) else {
            return false;
        };
        self.read(|entries| entries.get(&domain).is_some_and(|e| e.issued.is_some()))
    }

    /// The body to answer `GET /.well-known/acme-challenge/{token}` with
    /// (as `text/plain`, status 200), while an HTTP-01 order is open.
    pub fn http01_response(&self, token: &str) -> Option<String> {
        self.challenges.http01(token)
    }

    /// [`Manager::http01_response`] for a request path, for routers that
    /// have the path at hand: `None` for paths outside the challenge prefix.
    pub fn http01_response_for_path(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.http01_response(token)
    }

    /// The TLS configuration to answer a TLS-ALPN-01 validation with: to be
    /// used for a client hello that offers `acme-tls/1`
    /// ([`crate::is_acme_tls_alpn`]) for a domain whose order is open.
    pub fn alpn_config(&self, server_name: &str) -> Option<Arc<ServerConfig>> {
        self.challenges.alpn(&Self::lookup(server_name)?)
    }

    /// A server configuration that picks the certificate by SNI from this
    /// manager at every handshake, offering `alpn` (e.g. `h2`, `http/1.1`).
    pub fn server_config(self: &Arc<Self>, alpn: Vec<Vec<u8>>) -> Arc<ServerConfig> {
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
                .with_no_client_auth()
                .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn;
        Arc::new(config)
    }

    /// The domains an attempt is due for at `now`: pending ones, failed ones
    /// whose retry time came, and valid ones within the renewal window.
    pub fn due(&self, now: SystemTime) -> Vec<Domain> {
        self.read(|entries| {
            entries
                .iter()
                .filter(|(_, e)| self.due_at(e) <= now)
                .map(|(d, _)| d.clone())
                .collect()
        })
    }

    fn due_at(&self, entry: &Entry) -> SystemTime {
        // A certificate that is due the moment it arrives (a policy renewing
        // over the whole lifetime, a CA issuing very short ones) is renewed
        // no sooner than a failure would be retried, so the loop never
        // hammers the CA.
        let renew = entry.issued.as_ref().map(|i| {
            let at = self.config.renewal.renew_at(i.not_before, i.not_after);
            match entry.last_issued {
                Some(last) => at.max(last + self.config.backoff.initial),
                None => at,
            }
        });
        match (&entry.status, renew) {
            (Status::Failed { next_attempt, .. }, _) => *next_attempt,
            (_, Some(renew)) => renew,
            (_, None) => SystemTime::UNIX_EPOCH,
        }
    }

    /// When the next attempt is due, over all domains.
    pub fn next_due(&self) -> Option<SystemTime> {
        self.read(|entries| entries.values().map(|e| self.due_at(e)).min())
    }

    /// The account's URL at the CA (registering it on first use).
    pub async fn account_id(&self) -> Result<String, Error> {
        Ok(self.account().await?.id().to_owned())
    }

    async fn account(&self) -> Result<&Account, Error> {
        self.account
            .get_or_try_init(|| account::load_or_create(&self.config))
            .await
    }

    /// Orders a certificate for `domain` now (adding it if needed), proven
    /// with `kind`; on success it is stored and served from the next
    /// handshake. A failure is recorded in the domain's [`Status`] with the
    /// next attempt's time (capped exponential backoff) and returned.
    pub async fn issue(&self, domain: &Domain, kind: ChallengeKind) -> Result<SystemTime, Error> {
        self.add_domain(domain, kind)?;
        let lock = self.ordering_lock(domain)?;
        let _ordering = lock.lock().await;
        self.issue_locked(domain, kind).await
    }

    fn ordering_lock(&self, domain: &Domain) -> Result<Arc<tokio::sync::Mutex<()>>, Error> {
        self.read(|entries| entries.get(domain).map(|e| e.ordering.clone()))
            .ok_or_else(|| Error::UnknownDomain(domain.to_string()))
    }

    async fn issue_locked(
        &self,
        domain: &Domain,
        kind: ChallengeKind,
    ) -> Result<SystemTime, Error> {
        let result = self.order(domain, kind).await;
        let now = SystemTime::now();
        match result {
            Ok(issued) => {
                let not_after = issued.not_after;
                self.write(|entries| {
                    if let Some(entry) = entries.get_mut(domain) {
                        entry.issued = Some(issued);
                        entry.status = Status::Valid { not_after };
                        entry.last_issued = Some(now);
                    }
                });
                tracing::info!(%domain, ?not_after, "certificate issued");
                Ok(not_after)
            }
            Err(error) => {
                let reason = error.to_string();
                let status = self.write(|entries| {
                    let entry = entries.get_mut(domain)?;
                    let failures = match &entry.status {
                        Status::Failed { failures, .. } => failures + 1,
                        _ => 1,
                    };
                    entry.status = Status::Failed {
                        reason: reason.clone(),
                        failures,
                        next_attempt: now + self.config.backoff.delay(failures),
                    };
                    Some(entry.status.clone())
                });
                tracing::warn!(%domain, %reason, ?status, "certificate order failed");
                Err(error)
            }
        }
    }

    /// Makes an attempt for every domain due at `now`, one after another;
    /// returns how many succeeded.
    pub async fn run_due(&self, now: SystemTime) -> usize {
        let mut issued = 0;
        for domain in self.due(now) {
            let Ok(lock) = self.ordering_lock(&domain) else {
                continue;
            };
            let _ordering = lock.lock().await;
            // An explicit `issue` may have finished while this waited.
            let Some(kind) = self.read(|entries| {
                entries
                    .get(&domain)
                    .filter(|e| self.due_at(e) <= now)
                    .map(|e| e.kind)
            }) else {
                continue;
            };
            if self.issue_locked(&domain, kind).await.is_ok() {
                issued += 1;
            }
        }
        issued
    }

    /// Orders and renews until `shutdown` completes: attempts whatever is
    /// due, then sleeps until the next due time, a domain is added, or an
    /// hour passed.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            self.run_due(SystemTime::now()).await;
            let sleep = self
                .next_due()
                .map(|at| {
                    at.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                })
                .unwrap_or(IDLE_CHECK)
                .min(IDLE_CHECK);
            tokio::select! {
                () = &mut shutdown => return,
                () = self.changed.notified() => {}
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// One order from start to certificate, its challenge answers published
    /// only while it runs.
    async fn order(&self, domain: &Domain, kind: ChallengeKind) -> Result<Issued, Error> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(domain.to_string())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut published: Vec<Published> = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(Error::Validation {
                        domain: domain.to_string(),
                        reason: format!("authorization is {other:?}"),
                    })
                }
            }
            let mut challenge = authz.challenge(kind.wire()).ok_or(Error::NoChallenge {
                domain: domain.to_string(),
                kind: kind.name(),
            })?;
            let key_authorization = challenge.key_authorization();
            published.push(match kind {
                ChallengeKind::Http01 => self
                    .challenges
                    .publish_http01(&challenge.token, key_authorization.as_str()),
                ChallengeKind::TlsAlpn01 => self
                    .challenges
                    .publish_alpn(domain, key_authorization.digest().as_ref())?,
            });
            challenge
                .set_ready()
                .await
                .map_err(|e| validation_failure(domain, e))?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(self.config.order_timeout);
        let status = match order.poll_ready(&retry).await {
            Ok(status) => status,
            Err(instant_acme::Error::Timeout(_)) => {
                return Err(Error::Validation {
                    domain: domain.to_string(),
                    reason: format!(
                        "no answer from the CA within {:?}",
                        self.config.order_timeout
                    ),
                })
            }
            Err(e) => return Err(validation_failure(domain, e)),
        };
        drop(published);
        if status != OrderStatus::Ready {
            let reason = failure_reason(&mut order).await;
            return Err(Error::Validation {
                domain: domain.to_string(),
                reason,
            });
        }

        let fail = |reason: String| Error::Certificate {
            domain: domain.to_string(),
            reason,
        };
        let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let params =
            CertificateParams::new(vec![domain.to_string()]).map_err(|e| fail(e.to_string()))?;
        let csr = params
            .serialize_request(&key)
            .map_err(|e| fail(e.to_string()))?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&retry).await?;
        let key_pem = key.serialize_pem();
        let issued = certs::parse_issued(domain, chain.as_bytes(), key_pem.as_bytes())?;
        certs::save(
            &self.config.state_dir,
            domain,
            chain.as_bytes(),
            key_pem.as_bytes(),
        )?;
        Ok(issued)
    }
}

/// A problem document the CA answers while validating is the domain's
/// failure (e.g. nobody answered the challenge), not the protocol's. The CA
/// may answer it to `set_ready` already (pebble does without its sleep) or
/// while the order is polled.
fn validation_failure(domain: &Domain, error: instant_acme::Error) -> Error {
    match error {
        instant_acme::Error::Api(problem) => Error::Validation {
            domain: domain.to_string(),
            reason: problem.to_string(),
        },
        other => Error::Protocol(other),
    }
}

/// The CA's own words for why an order became invalid: the problem of each
/// failed challenge, else the order's.
async fn failure_reason(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for challenge in &authz.challenges {
            if let Some(problem) = &challenge.error {
                reasons.push(problem.to_string());
            }
        }
    }
    if reasons.is_empty() {
        if let Some(problem) = &order.state().error {
            reasons.push(problem.to_string());
        }
    }
    if reasons.is_empty() {
        "the order became invalid without a reason given".into()
    } else {
        reasons.join("; ")
    }
}

impl ResolvesServerCert for Manager {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.certified_key(hello.server_name()?)
    }
}
