//! Users, sign-in and refresh tokens.

use super::*;

impl Control {
    // ---- accounts -------------------------------------------------------------

    /// Who an access token belongs to. The role comes from the store, so a
    /// changed role applies at once.
    pub async fn principal(&self, access_token: &str, now_secs: i64) -> Result<Principal> {
        let claims = self.tokens.verify(access_token, now_secs)?;
        let user = self
            .store
            .user_by_id(&claims.sub)
            .await?
            .ok_or(ControlError::Unauthenticated)?;
        Ok(Principal {
            user_id: user.id,
            email: user.email,
            role: Role::parse(&user.role).map_err(|_| ControlError::Unauthenticated)?,
        })
    }

    pub async fn needs_setup(&self) -> Result<bool> {
        Ok(self.store.count_users().await? == 0)
    }

    /// Creates the first admin; refused once any user exists.
    pub async fn setup(&self, email: &str, password: &str, now: i64) -> Result<UserView> {
        let email = Email::parse(email)?;
        let password = NewPassword::parse(password)?;
        let row = UserRow {
            id: new_id("usr"),
            email: email.as_str().to_owned(),
            password_hash: slow_hash(password.expose()).await?,
            role: Role::Admin.as_str().into(),
            created_at: now,
        };
        if !self.store.insert_first_user(&row).await? {
            return Err(ControlError::Conflict("setup is done already".into()));
        }
        self.audit(&row.email, "setup", &row.id, "first admin")
            .await;
        Ok(user_view(row))
    }

    pub async fn create_user(
        &self,
        who: &Principal,
        email: &str,
        password: &str,
        role: &str,
        now: i64,
    ) -> Result<UserView> {
        self.authorize(who, Action::ManageUsers)?;
        let email = Email::parse(email)?;
        let password = NewPassword::parse(password)?;
        let role = Role::parse(role)?;
        let row = UserRow {
            id: new_id("usr"),
            email: email.as_str().to_owned(),
            password_hash: slow_hash(password.expose()).await?,
            role: role.as_str().into(),
            created_at: now,
        };
        match self.store.insert_user(&row).await {
            Err(StoreError::Duplicate) => {
                return Err(ControlError::Conflict(
                    "a user with this email exists".into(),
                ))
            }
            other => other?,
        }
        self.audit(
            &who.email,
            "user.create",
            &row.id,
            &format!("{} as {}", row.email, row.role),
        )
        .await;
        Ok(user_view(row))
    }

    pub async fn list_users(&self, who: &Principal) -> Result<Vec<UserView>> {
        self.authorize(who, Action::ManageUsers)?;
        Ok(self
            .store
            .list_users()
            .await?
            .into_iter()
            .map(user_view)
            .collect())
    }

    /// Signs in with a password.
    pub async fn login(&self, email: &str, password: &str, now: i64) -> Result<TokenPair> {
        let Ok(email) = Email::parse(email) else {
            slow_dummy(password).await;
            return Err(ControlError::Unauthenticated);
        };
        let Some(user) = self.store.user_by_email(email.as_str()).await? else {
            slow_dummy(password).await;
            return Err(ControlError::Unauthenticated);
        };
        if !slow_verify(password, &user.password_hash).await? {
            return Err(ControlError::Unauthenticated);
        }
        self.issue_pair(&user, &new_id("fam"), now).await
    }

    pub(super) async fn issue_pair(
        &self,
        user: &UserRow,
        family: &str,
        now: i64,
    ) -> Result<TokenPair> {
        let role = Role::parse(&user.role).map_err(|_| ControlError::Unauthenticated)?;
        let access_token = self.tokens.issue(&user.id, role.as_str(), now / 1000)?;
        let refresh = SplitToken::generate("rt")?;
        self.store
            .insert_refresh(&RefreshRow {
                id: refresh.id.clone(),
                user_id: user.id.clone(),
                family: family.to_owned(),
                secret_hash: refresh.sha256_hex(),
                expires_at: now + REFRESH_TTL_MS,
                used_at: None,
                revoked_at: None,
                created_at: now,
            })
            .await?;
        Ok(TokenPair {
            access_token,
            refresh_token: refresh.reveal(),
            expires_in: self.tokens.ttl_secs(),
            role: role.as_str(),
        })
    }

    /// Trades a refresh token for a new pair; the old one is spent. A spent
    /// token presented again means it leaked: its whole family is revoked.
    pub async fn refresh(&self, token: &str, now: i64) -> Result<TokenPair> {
        let token = SplitToken::parse(token)?;
        let row = self
            .store
            .refresh_by_id(&token.id)
            .await?
            .ok_or(ControlError::Unauthenticated)?;
        if !token.matches_sha256(&row.secret_hash) || row.revoked_at.is_some() {
            return Err(ControlError::Unauthenticated);
        }
        if row.used_at.is_some() || !self.store.use_refresh(&row.id, now).await? {
            let revoked = self.store.revoke_family(&row.family, now).await?;
            tracing::warn!(user = %row.user_id, revoked, "refresh token reused; family revoked");
            self.audit(
                &row.user_id,
                "token.reuse",
                &row.family,
                "refresh token reused; sessions revoked",
            )
            .await;
            return Err(ControlError::Unauthenticated);
        }
        if row.expires_at <= now {
            return Err(ControlError::Unauthenticated);
        }
        let user = self
            .store
            .user_by_id(&row.user_id)
            .await?
            .ok_or(ControlError::Unauthenticated)?;
        self.issue_pair(&user, &row.family, now).await
    }

    /// Revokes the session a refresh token belongs to.
    pub async fn logout(&self, token: &str, now: i64) -> Result<()> {
        let token = SplitToken::parse(token)?;
        let Some(row) = self.store.refresh_by_id(&token.id).await? else {
            return Ok(());
        };
        if token.matches_sha256(&row.secret_hash) {
            self.store.revoke_family(&row.family, now).await?;
        }
        Ok(())
    }
}
