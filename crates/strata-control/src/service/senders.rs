//! Senders, their enrolment, and destinations.

use super::*;

impl Control {
    // ---- senders ------------------------------------------------------------

    pub async fn create_sender(
        &self,
        who: &Principal,
        name: &str,
        enrolment_ttl_secs: Option<i64>,
        now: i64,
    ) -> Result<NewSender> {
        self.authorize(who, Action::ManageSenders)?;
        let name = Name::parse("name", name)?;
        let row = SenderRow {
            id: new_id("snd"),
            name: name.as_str().to_owned(),
            public_key: None,
            hostname: None,
            enrolled_at: None,
            last_seen_at: None,
            created_at: now,
        };
        self.store.insert_sender(&row).await?;
        let (token, expires_at) = self
            .issue_enrolment(&row.id, enrolment_ttl_secs, now)
            .await?;
        self.audit(&who.email, "sender.create", &row.id, &row.name)
            .await;
        Ok(NewSender {
            sender: self.sender_view(row),
            enrolment_token: token,
            enrolment_expires_at: expires_at,
        })
    }

    /// A new enrolment token for an existing sender (re-enrolment replaces
    /// its key on use).
    pub async fn new_enrolment_token(
        &self,
        who: &Principal,
        sender_id: &str,
        ttl_secs: Option<i64>,
        now: i64,
    ) -> Result<(String, i64)> {
        self.authorize(who, Action::ManageSenders)?;
        let sender_id = parse_id("sender_id", "snd", sender_id)?;
        self.store
            .sender(&sender_id)
            .await?
            .ok_or(ControlError::NotFound("sender"))?;
        let out = self.issue_enrolment(&sender_id, ttl_secs, now).await?;
        self.audit(&who.email, "sender.enrolment_token", &sender_id, "")
            .await;
        Ok(out)
    }

    pub(super) async fn issue_enrolment(
        &self,
        sender_id: &str,
        ttl_secs: Option<i64>,
        now: i64,
    ) -> Result<(String, i64)> {
        let ttl = ttl_secs.unwrap_or(ENROLMENT_TTL_SECS);
        if !(1..=30 * 24 * 3600).contains(&ttl) {
            return Err(Invalid {
                field: "enrolment_ttl_secs",
                reason: "must be between 1 s and 30 days".into(),
            }
            .into());
        }
        let token = SplitToken::generate("enr")?;
        let expires_at = now + ttl * 1000;
        self.store
            .insert_enrolment(&EnrolmentRow {
                id: token.id.clone(),
                sender_id: sender_id.to_owned(),
                secret_hash: slow_hash(token.secret()).await?,
                expires_at,
                used_at: None,
                created_at: now,
            })
            .await?;
        Ok((token.reveal(), expires_at))
    }

    /// An agent enrols: one use of a token, before it expires, binds the
    /// agent's public key to the sender.
    pub async fn enrol(
        &self,
        token: &str,
        public_key: &str,
        hostname: &str,
        now: i64,
    ) -> Result<String> {
        let token = SplitToken::parse(token)?;
        let key = AgentKey::parse(public_key)?;
        let hostname = Name::parse("hostname", hostname)?;
        let Some(row) = self.store.enrolment(&token.id).await? else {
            slow_dummy(token.secret()).await;
            return Err(ControlError::Unauthenticated);
        };
        if !slow_verify(token.secret(), &row.secret_hash).await? {
            return Err(ControlError::Unauthenticated);
        }
        if row.used_at.is_some() {
            return Err(ControlError::Conflict(
                "this enrolment token was used already".into(),
            ));
        }
        if row.expires_at <= now {
            return Err(ControlError::Conflict(
                "this enrolment token has expired".into(),
            ));
        }
        if !self
            .store
            .complete_enrolment(
                &row.id,
                &row.sender_id,
                &key.to_base64(),
                hostname.as_str(),
                now,
            )
            .await?
        {
            return Err(ControlError::Conflict(
                "this enrolment token was used already".into(),
            ));
        }
        self.audit(
            &row.sender_id,
            "sender.enrol",
            &row.sender_id,
            hostname.as_str(),
        )
        .await;
        Ok(row.sender_id)
    }

    pub(super) fn sender_view(&self, row: SenderRow) -> SenderView {
        let presence = self.hub.presence(&row.id);
        let status = lock(&self.senders)
            .get(&row.id)
            .and_then(|s| s.status.clone());
        SenderView {
            enrolled: row.public_key.is_some(),
            presence: presence.as_str(),
            interfaces: status
                .as_ref()
                .map(|s| s.interfaces.clone())
                .unwrap_or_default(),
            inputs: status.map(|s| s.inputs).unwrap_or_default(),
            id: row.id,
            name: row.name,
            hostname: row.hostname,
            last_seen_at: row.last_seen_at,
        }
    }

    pub async fn list_senders(&self, who: &Principal) -> Result<Vec<SenderView>> {
        self.authorize(who, Action::View)?;
        Ok(self
            .store
            .list_senders()
            .await?
            .into_iter()
            .map(|r| self.sender_view(r))
            .collect())
    }

    pub async fn sender(&self, who: &Principal, id: &str) -> Result<SenderView> {
        self.authorize(who, Action::View)?;
        let id = parse_id("sender_id", "snd", id)?;
        let row = self
            .store
            .sender(&id)
            .await?
            .ok_or(ControlError::NotFound("sender"))?;
        Ok(self.sender_view(row))
    }

    /// Sends a harmless command and returns its round-trip time.
    pub async fn ping_sender(&self, who: &Principal, id: &str) -> Result<Duration> {
        self.authorize(who, Action::View)?;
        let id = parse_id("sender_id", "snd", id)?;
        let update = Message::ConfigUpdate(strata_protocol::ConfigUpdate {
            heartbeat_secs: Some(self.config.heartbeat_secs),
            stats_interval_ms: None,
        });
        self.hub
            .command(&id, &update, COMMAND_TIMEOUT)
            .await
            .map_err(|e| ControlError::Conflict(e.to_string()))
    }

    // ---- destinations ---------------------------------------------------------

    pub async fn create_destination(
        &self,
        who: &Principal,
        name: &str,
        platform: &str,
        url: &str,
        stream_key: &str,
        now: i64,
    ) -> Result<DestinationView> {
        self.authorize(who, Action::ManageDestinations)?;
        let name = Name::parse("name", name)?;
        let platform = Platform::parse(platform)?;
        let url = DestinationUrl::parse(platform, url)?;
        let key = StreamKey::parse(stream_key)?;
        let id = new_id("dst");
        let row = DestinationRow {
            url_sealed: self
                .secrets
                .seal(&url_context(&id), url.expose().as_bytes())?,
            url_hint: url.hint().to_owned(),
            key_sealed: self
                .secrets
                .seal(&key_context(&id), key.expose().as_bytes())?,
            key_hint: secrets::mask_hint(key.expose()),
            id,
            name: name.as_str().to_owned(),
            platform: platform.as_str().to_owned(),
            created_at: now,
        };
        self.store.insert_destination(&row).await?;
        self.audit(&who.email, "destination.create", &row.id, &row.name)
            .await;
        Ok(destination_view(row))
    }

    pub async fn list_destinations(&self, who: &Principal) -> Result<Vec<DestinationView>> {
        self.authorize(who, Action::View)?;
        Ok(self
            .store
            .list_destinations()
            .await?
            .into_iter()
            .map(destination_view)
            .collect())
    }

    pub async fn delete_destination(&self, who: &Principal, id: &str) -> Result<()> {
        self.authorize(who, Action::ManageDestinations)?;
        let id = parse_id("destination_id", "dst", id)?;
        self.store
            .destination(&id)
            .await?
            .ok_or(ControlError::NotFound("destination"))?;
        if !self.store.delete_destination(&id).await? {
            return Err(ControlError::Conflict(
                "streams refer to this destination".into(),
            ));
        }
        self.audit(&who.email, "destination.delete", &id, "").await;
        Ok(())
    }

    /// Opens a destination's URL and key for a receiver.
    pub(super) async fn open_destinations(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, String, String)>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = self
                .store
                .destination(id)
                .await?
                .ok_or(ControlError::NotFound("destination"))?;
            let url = self
                .secrets
                .open_string(&url_context(id), &row.url_sealed)?;
            let key = self
                .secrets
                .open_string(&key_context(id), &row.key_sealed)?;
            out.push((row.platform, url, key));
        }
        Ok(out)
    }
}
