//! The OTP service: members, phone registration, issuing, sending and
//! verifying OTPs. It joins the pure rules (`member`, `otp`) with storage,
//! the clock and the delivery channels.
//!
//! It holds a plain code only between issuing and handing the message to a
//! channel; the code is never stored, logged or answered.

use std::sync::Arc;

use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::clock::{Clock, Millis};
use crate::config::Config;
use crate::delivery::log::{DeliveryLog, Event, NewMessage, State};
use crate::member::{self, Channel, Member, MemberError, Phone};
use crate::otp::{self, HashKey, Otp, OtpStatus, SendLimits, Verdict};
use crate::store::retention::Retention;
use crate::store::{Store, StoreError, Tree};

/// Refusals kept per member, newest; a client that keeps asking while
/// refused does not grow the store.
const REFUSALS_KEPT: usize = 100;

pub const PHONE_VERIFICATION: &str = "phone_verification";

/// Why a request failed; the HTTP layer maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Member(#[from] MemberError),
    #[error("too many codes sent to this destination; retry in {retry_after} s")]
    RateLimited { retry_after: i64 },
    #[error("verification failed: {}", .0.code())]
    Verify(Verdict),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Delivers an OTP message; implemented over SMPP and SMTP in `delivery`.
pub trait Sender: Send + Sync + 'static {
    /// Hands the message to the channel and records the outcome in the log.
    /// `text` holds the plain code: it must not be kept beyond delivery.
    fn send(self: Arc<Self>, job: SendJob) -> futures::future::BoxFuture<'static, ()>;
    /// The sender ID the member will see for a destination.
    fn shown_sender(&self, channel: Channel, destination: &str) -> String;
}

/// One message for a channel.
pub struct SendJob {
    pub log_id: String,
    pub channel: Channel,
    pub destination: String,
    pub locale: String,
    pub code: String,
    pub purpose: String,
    pub expires_at: Millis,
    pub valid_minutes: u32,
}

/// The text of an OTP SMS in the member's language.
pub fn sms_text(locale: &str, brand: &str, code: &str, valid_minutes: u32) -> String {
    if locale == "ja" {
        format!("【{brand}】ワンタイムパスワード: {code}\n有効期限は{valid_minutes}分です。他人に教えないでください。")
    } else {
        format!("{brand} one-time password: {code}. Valid for {valid_minutes} minutes. Do not share it.")
    }
}

/// A refused send, kept for the troubleshooting desk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    pub at: Millis,
    pub member_id: String,
    pub purpose: String,
    pub destination: String,
    pub retry_after: i64,
}

#[derive(Clone)]
pub struct OtpService {
    store: Store,
    clock: Arc<Clock>,
    log: DeliveryLog,
    key: HashKey,
    members: Tree,
    /// `phone\0{e164}\0{member}` and `email\0{lower case}\0{member}` →
    /// member id: who has a number or an address, without reading every
    /// member.
    member_index: Tree,
    otps: Tree,
    /// `member\0{member}\0{otp}` and `current\0{member}\0{purpose}` → otp id.
    otp_index: Tree,
    /// Issue order (`{n:015}` → otp id), oldest first, for the retention.
    otp_order: Tree,
    /// How many OTP records are kept (`log_retention`): past it the oldest
    /// finished ones go; a code that can still be used never does.
    retention: Arc<Retention>,
    /// destination → recent send times.
    sends: Tree,
    refusals: Tree,
    limits: Arc<SendLimits>,
    validity_ms: Millis,
    max_attempts: u32,
    brand: String,
    sender: Arc<dyn Sender>,
    /// Striped locks, one family each for members, destinations (send
    /// limits) and OTPs (verify), taken in that order so they never deadlock.
    locks: Arc<[Vec<tokio::sync::Mutex<()>>; 3]>,
}

#[derive(Clone, Copy)]
enum Lock {
    Member = 0,
    Destination = 1,
    Otp = 2,
}

/// Fields of `POST /v1/members`.
pub struct NewMember {
    pub id: Option<String>,
    pub locale: Option<String>,
    pub residence: Option<String>,
    pub email: Option<String>,
}

impl OtpService {
    pub fn open(
        store: &Store,
        clock: Arc<Clock>,
        log: DeliveryLog,
        key: HashKey,
        config: &Config,
        sender: Arc<dyn Sender>,
    ) -> Result<OtpService, StoreError> {
        let otp_order = store.tree("otp_order")?;
        let (members, member_index) = (store.tree("members")?, store.tree("member_index")?);
        if member_index.is_empty() && !members.is_empty() {
            // A data directory from before the index.
            let mut batch = store.batch();
            for (id, member) in members.scan_prefix::<Member>("")? {
                for key in member_keys(&member) {
                    batch.put(&member_index, &key, &id)?;
                }
            }
            store.apply(batch)?;
        }
        Ok(OtpService {
            store: store.clone(),
            clock,
            log,
            key,
            members,
            member_index,
            otps: store.tree("otps")?,
            otp_index: store.tree("otp_index")?,
            retention: Arc::new(Retention::new(config.log_retention, otp_order.len())),
            otp_order,
            sends: store.tree("sends")?,
            refusals: store.tree("refusals")?,
            limits: Arc::new(SendLimits {
                cooldown_ms: config.otp.cooldown_seconds * 1000,
                cap: config.otp.sends_per_window,
                window_ms: config.otp.window_seconds * 1000,
            }),
            validity_ms: config.otp.validity_seconds * 1000,
            max_attempts: config.otp.max_attempts,
            brand: config.sender.brand.clone(),
            sender,
            locks: Arc::new(std::array::from_fn(|_| {
                // An issue holds its destination's stripe until the SMSC
                // answers, so unrelated numbers that share one wait for each
                // other's round trip: 64 stripes made that likely at 64
                // concurrent issues.
                (0..crate::LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect()
            })),
        })
    }

    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    fn lock(&self, family: Lock, key: &str) -> &tokio::sync::Mutex<()> {
        let stripes = &self.locks[family as usize];
        let hash = key.bytes().fold(5381usize, |h, b| h.wrapping_mul(33) ^ b as usize);
        &stripes[hash % stripes.len()]
    }

    // ----- members -----

    pub async fn create_member(&self, new: NewMember) -> Result<Member, ServiceError> {
        let residence = member::parse_residence(new.residence.as_deref().unwrap_or("JP"))?;
        let locale = match new.locale.as_deref() {
            Some(l) => member::parse_locale(l)?,
            None if residence == "JP" => "ja".into(),
            None => "en".into(),
        };
        let email = new.email.as_deref().map(member::parse_email).transpose()?;
        let id = match new.id {
            Some(id) => {
                let id = id.trim().to_string();
                if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                {
                    return Err(MemberError::Invalid("id must be 1-64 letters, digits, '-', '_' or '.'".into()).into());
                }
                id
            }
            None => format!("M{:08}", self.store.next_id()?),
        };
        let _guard = self.lock(Lock::Member, &id).lock().await;
        if self.members.contains(&id)? {
            return Err(ServiceError::Conflict(format!("member `{id}` already exists")));
        }
        let member = Member {
            id: id.clone(),
            locale,
            residence,
            notification: email.as_ref().map(|_| Channel::Email),
            email,
            phone: None,
            created_at: self.now(),
        };
        self.write_member(None, &member)?;
        self.store.flush().await?;
        Ok(member)
    }

    /// Writes a member and its index entries in one batch; `old` is the
    /// member as stored before, whose entries go. Under the member's lock.
    fn write_member(&self, old: Option<&Member>, member: &Member) -> Result<(), ServiceError> {
        let mut batch = self.store.batch();
        batch.put(&self.members, &member.id, member)?;
        let keys = member_keys(member);
        for gone in old.map(member_keys).unwrap_or_default() {
            if !keys.contains(&gone) {
                batch.remove(&self.member_index, &gone);
            }
        }
        for key in &keys {
            batch.put(&self.member_index, key, &member.id)?;
        }
        self.store.apply(batch)?;
        Ok(())
    }

    /// Stores a member as given (demo data and scenarios); checks the destination rules.
    pub async fn import_member(&self, member: &Member) -> Result<(), ServiceError> {
        if let Some(channel) = member.notification {
            member.check_destination(channel)?;
        }
        let _guard = self.lock(Lock::Member, &member.id).lock().await;
        let old = self.members.get::<Member>(&member.id)?;
        self.write_member(old.as_ref(), member)?;
        self.store.flush().await?;
        Ok(())
    }

    pub fn member(&self, id: &str) -> Result<Member, ServiceError> {
        self.members.get(id)?.ok_or(ServiceError::NotFound("member"))
    }

    pub fn all_members(&self) -> Result<Vec<Member>, ServiceError> {
        Ok(self
            .members
            .scan_prefix::<Member>("")?
            .into_iter()
            .map(|(_, m)| m)
            .collect())
    }

    /// Finds members by phone (any spelling) or email.
    pub fn find_members(&self, phone: Option<&str>, email: Option<&str>) -> Result<Vec<Member>, ServiceError> {
        let phone = phone
            .and_then(member::national_number)
            .map(|n| format!("+81{}", &n[1..]));
        let email = email.map(|e| e.trim().to_ascii_lowercase());
        let mut ids = Vec::new();
        for prefix in [
            phone.map(|p| format!("phone\0{p}\0")),
            email.map(|e| format!("email\0{e}\0")),
        ]
        .into_iter()
        .flatten()
        {
            ids.extend(
                self.member_index
                    .scan_prefix::<String>(&prefix)?
                    .into_iter()
                    .map(|(_, id)| id),
            );
        }
        ids.sort();
        ids.dedup();
        let mut found = Vec::new();
        for id in ids {
            found.extend(self.members.get::<Member>(&id)?);
        }
        Ok(found)
    }

    async fn update_member(
        &self,
        id: &str,
        change: impl FnOnce(&mut Member) -> Result<(), ServiceError>,
    ) -> Result<Member, ServiceError> {
        let _guard = self.lock(Lock::Member, id).lock().await;
        let old = self.member(id)?;
        let mut member = old.clone();
        change(&mut member)?;
        self.write_member(Some(&old), &member)?;
        self.store.flush().await?;
        Ok(member)
    }

    pub async fn set_email(&self, id: &str, email: &str) -> Result<Member, ServiceError> {
        let email = member::parse_email(email)?;
        self.update_member(id, |m| {
            m.email = Some(email);
            if m.notification.is_none() {
                m.notification = Some(Channel::Email);
            }
            Ok(())
        })
        .await
    }

    pub async fn set_notification(&self, id: &str, channel: Channel) -> Result<Member, ServiceError> {
        self.update_member(id, |m| {
            m.check_destination(channel)?;
            m.notification = Some(channel);
            Ok(())
        })
        .await
    }

    /// Step 2 of the help page: register a number; a verification code goes to it by SMS.
    pub async fn register_phone(&self, id: &str, number: &str) -> Result<(Member, Otp), ServiceError> {
        let e164 = member::parse_mobile(number)?;
        let current = self.member(id)?;
        current.check_can_register_phone()?;
        // The limits are checked before the number changes, so a refused
        // registration leaves the member as it was.
        self.check_limits(&current, PHONE_VERIFICATION, &e164)?;
        let member = self
            .update_member(id, |m| {
                let same_verified = m.phone.as_ref().is_some_and(|p| p.number == e164 && p.verified);
                if !same_verified {
                    m.phone = Some(Phone {
                        number: e164.clone(),
                        verified: false,
                    });
                }
                Ok(())
            })
            .await?;
        let otp = self.issue_to(&member, PHONE_VERIFICATION, Channel::Sms, &e164).await?;
        Ok((member, otp))
    }

    /// Step 3: confirm the number with the code.
    pub async fn verify_phone(&self, id: &str, code: &str) -> Result<Member, ServiceError> {
        let member = self.member(id)?;
        let number = member
            .phone
            .as_ref()
            .map(|p| p.number.clone())
            .ok_or(MemberError::NoDestination("mobile number"))?;
        let otp_id = self
            .otp_index
            .get::<String>(&format!("current\0{id}\0{PHONE_VERIFICATION}"))?
            .ok_or(ServiceError::NotFound("phone verification code"))?;
        // The code the member was sent may be gone with the retention
        // (used or expired long ago): then there is no code to verify.
        let otp = match self.verify(&otp_id, code).await {
            Err(ServiceError::NotFound(_)) => return Err(ServiceError::NotFound("phone verification code")),
            other => other?,
        };
        if otp.destination != number {
            return Err(ServiceError::Verify(Verdict::Superseded { matched_older: None }));
        }
        self.update_member(id, |m| {
            if let Some(p) = m.phone.as_mut() {
                if p.number == number {
                    p.verified = true;
                }
            }
            Ok(())
        })
        .await
    }

    // ----- OTPs -----

    /// Issues an OTP to the member's notification destination and sends it.
    pub async fn issue(&self, member_id: &str, purpose: &str) -> Result<Otp, ServiceError> {
        let purpose = purpose.trim();
        if purpose.is_empty() || purpose.len() > 64 {
            return Err(MemberError::Invalid("purpose must be 1-64 characters".into()).into());
        }
        let member = self.member(member_id)?;
        let (channel, destination) = member.destination()?;
        self.issue_to(&member, purpose, channel, &destination).await
    }

    /// A new code for the same member and purpose, superseding `otp_id`.
    pub async fn resend(&self, otp_id: &str) -> Result<Otp, ServiceError> {
        let old = self.otp(otp_id)?;
        let member = self.member(&old.member_id)?;
        let (channel, destination) = if old.purpose == PHONE_VERIFICATION {
            (Channel::Sms, old.destination.clone())
        } else {
            member.destination()?
        };
        self.issue_to(&member, &old.purpose, channel, &destination).await
    }

    fn check_limits(&self, member: &Member, purpose: &str, destination: &str) -> Result<(), ServiceError> {
        let sends: Vec<Millis> = self.sends.get(destination)?.unwrap_or_default();
        let now = self.now();
        if let Err(retry_after) = self.limits.check(&sends, now) {
            let refusal = Refusal {
                at: now,
                member_id: member.id.clone(),
                purpose: purpose.into(),
                destination: destination.into(),
                retry_after,
            };
            self.refusals
                .put(&format!("{}\0{:015}", member.id, self.store.next_id()?), &refusal)?;
            let kept = self.refusals.keys_with_prefix(&format!("{}\0", member.id))?;
            for key in kept.iter().take(kept.len().saturating_sub(REFUSALS_KEPT)) {
                self.refusals.remove(key)?;
            }
            return Err(ServiceError::RateLimited { retry_after });
        }
        Ok(())
    }

    async fn issue_to(
        &self,
        member: &Member,
        purpose: &str,
        channel: Channel,
        destination: &str,
    ) -> Result<Otp, ServiceError> {
        let _dest_guard = self.lock(Lock::Destination, destination).lock().await;
        self.check_limits(member, purpose, destination)?;
        let now = self.now();
        let mut raw = [0u8; 12];
        OsRng.fill_bytes(&mut raw);
        let id = format!("otp_{}", otp::hex(&raw));
        let sender = self.sender.shown_sender(channel, destination);
        let (mut otp, code) = otp::issue(
            &self.key,
            otp::Issue {
                id: id.clone(),
                member_id: &member.id,
                purpose,
                channel,
                destination,
                sender: sender.clone(),
                now,
                validity_ms: self.validity_ms,
                max_attempts: self.max_attempts,
            },
            &mut OsRng,
        );
        let valid_minutes = (self.validity_ms / 60_000).max(1) as u32;
        let masked = match channel {
            Channel::Sms => sms_text(&member.locale, &self.brand, "******", valid_minutes),
            Channel::Email => format!(
                "[{}] one-time password email ({}) with code ******",
                self.brand, member.locale
            ),
        };
        // The log entry and the OTP's records are made durable by one sync.
        let logged = self.log.write_create(
            NewMessage {
                channel,
                to: destination.to_string(),
                from: sender,
                origin: "otpgate".into(),
                member_id: Some(member.id.clone()),
                otp_id: Some(id.clone()),
                text: masked,
                carrier: None,
                at: now,
            },
            Event::new("queued", now)
                .state(State::Queued)
                .detail(format!("OTP for `{purpose}`")),
        )?;
        let log_id = logged.message.id.clone();
        otp.message_id = Some(log_id.clone());

        // Supersede the member's current OTP for this purpose, then record the new one.
        // The old one's lock is held until the batch is in, so neither a
        // verify nor the retention comes between the read and the write.
        let current_key = format!("current\0{}\0{purpose}", member.id);
        let mut batch = self.store.batch();
        let mut _old_guard = None;
        if let Some(old_id) = self.otp_index.get::<String>(&current_key)? {
            _old_guard = Some(self.lock(Lock::Otp, &old_id).lock().await);
            if let Some(mut old) = self.otps.get::<Otp>(&old_id)? {
                if old.status == OtpStatus::Pending {
                    old.status = OtpStatus::Superseded;
                    old.superseded_by = Some(id.clone());
                    batch.put(&self.otps, &old_id, &old)?;
                }
            }
        }
        let mut sends: Vec<Millis> = self.sends.get(destination)?.unwrap_or_default();
        self.limits.prune(&mut sends, now);
        sends.push(now);
        batch.put(&self.sends, destination, &sends)?;
        batch.put(&self.otps, &id, &otp)?;
        batch.put(&self.otp_index, &current_key, &id)?;
        batch.put(&self.otp_index, &format!("member\0{}\0{id}", member.id), &id)?;
        batch.put(&self.otp_order, &format!("{:015}", self.store.next_id()?), &id)?;
        self.store.apply(batch)?;
        self.retention.added();
        drop(_old_guard);
        self.log.publish(logged).await?;

        self.sender
            .clone()
            .send(SendJob {
                log_id,
                channel,
                destination: destination.to_string(),
                locale: member.locale.clone(),
                code,
                purpose: purpose.to_string(),
                expires_at: otp.expires_at,
                valid_minutes,
            })
            .await;
        drop(_dest_guard);
        self.enforce_retention();
        Ok(otp)
    }

    /// Removes the oldest finished OTP records past the retention, with
    /// their index entries (see [`Retention`]). A pending code that has not
    /// expired stays, whatever its age. A member's `current` entry may then
    /// name a removed OTP, which reads as none.
    fn enforce_retention(&self) {
        let now = self.now();
        self.retention
            .remove_oldest("OTP records", &self.store, &self.otp_order, |key, batch| {
                let Some(id) = self.otp_order.get::<String>(key)? else {
                    return Ok(None);
                };
                // Not waited for: a verify or an issue holding the stripe is
                // working on a code, which is not one to remove.
                let Ok(guard) = self.lock(Lock::Otp, &id).try_lock() else {
                    return Ok(None);
                };
                if let Some(otp) = self.otps.get::<Otp>(&id)? {
                    if otp.status == OtpStatus::Pending && now < otp.expires_at {
                        return Ok(None);
                    }
                    batch.remove(&self.otps, &id);
                    batch.remove(&self.otp_index, &format!("member\0{}\0{id}", otp.member_id));
                }
                batch.remove(&self.otp_order, key);
                Ok(Some(guard))
            })
    }

    pub fn otp(&self, id: &str) -> Result<Otp, ServiceError> {
        self.otps.get(id)?.ok_or(ServiceError::NotFound("OTP"))
    }

    /// Every OTP of a member, oldest first.
    pub fn otps_of(&self, member_id: &str) -> Result<Vec<Otp>, ServiceError> {
        let mut out = Vec::new();
        for (_, id) in self
            .otp_index
            .scan_prefix::<String>(&format!("member\0{member_id}\0"))?
        {
            if let Some(o) = self.otps.get::<Otp>(&id)? {
                out.push(o);
            }
        }
        out.sort_by_key(|o| o.issued_at);
        Ok(out)
    }

    pub fn refusals_of(&self, member_id: &str) -> Result<Vec<Refusal>, ServiceError> {
        Ok(self
            .refusals
            .scan_prefix::<Refusal>(&format!("{member_id}\0"))?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// Verifies a code. Exactly one of many concurrent right answers wins:
    /// the check and the update happen under the OTP's lock, and the answer
    /// is given after the update is durable.
    pub async fn verify(&self, otp_id: &str, code: &str) -> Result<Otp, ServiceError> {
        let _guard = self.lock(Lock::Otp, otp_id).lock().await;
        let mut otp = self.otp(otp_id)?;
        let (member_id, purpose, issued_at) = (otp.member_id.clone(), otp.purpose.clone(), otp.issued_at);
        let older = || -> Result<Vec<Otp>, ServiceError> {
            let mut all = self.otps_of(&member_id)?;
            all.retain(|o| o.purpose == purpose && o.issued_at <= issued_at && o.id != otp_id);
            Ok(all)
        };
        let verdict = otp::verify(&self.key, &mut otp, code, older, self.now())?;
        self.otps.put(otp_id, &otp)?;
        self.store.flush().await?;
        match verdict {
            Verdict::Verified => Ok(otp),
            other => Err(ServiceError::Verify(other)),
        }
    }

    pub fn log(&self) -> &DeliveryLog {
        &self.log
    }
}

/// A member's keys in the member index: its number and its address.
fn member_keys(member: &Member) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(phone) = &member.phone {
        keys.push(format!("phone\0{}\0{}", phone.number, member.id));
    }
    if let Some(email) = &member.email {
        keys.push(format!("email\0{}\0{}", email.to_ascii_lowercase(), member.id));
    }
    keys
}

/// Reads the server secret from the data directory, creating it on first start.
///
/// A new key is written to `secret.key.tmp`, synced, renamed into place
/// and the directory synced: after a crash of the machine the key is
/// there whole or not at all. A rename the crash undid leaves the
/// temporary file, whose key may already have hashed stored codes; a
/// whole one is taken, not replaced (a key made fresh would make every
/// code issued before unverifiable).
pub fn load_or_create_key(dir: &std::path::Path) -> std::io::Result<HashKey> {
    let path = dir.join("secret.key");
    let tmp = dir.join("secret.key.tmp");
    let read = |path: &std::path::Path| -> std::io::Result<HashKey> {
        let bytes = std::fs::read(path)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a 32-byte key", path.display()),
            )
        })?;
        Ok(HashKey(key))
    };
    let put_in_place = || -> std::io::Result<()> {
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    match read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        read => return read,
    }
    if let Ok(key) = read(&tmp) {
        std::fs::File::open(&tmp)?.sync_all()?;
        put_in_place()?;
        return Ok(key);
    }
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    std::fs::create_dir_all(dir)?;
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(&key)?;
        file.sync_all()?;
    }
    put_in_place()?;
    Ok(HashKey(key))
}

#[cfg(test)]
mod tests {
    use super::load_or_create_key;

    #[test]
    fn the_key_is_made_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let made = load_or_create_key(dir.path()).unwrap();
        assert!(!dir.path().join("secret.key.tmp").exists());
        assert_eq!(load_or_create_key(dir.path()).unwrap().0, made.0);
    }

    /// A crash of the machine undid the rename: the key in the temporary
    /// file may have hashed codes already, so it is the one kept.
    #[test]
    fn a_whole_key_left_in_the_temporary_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.key.tmp"), [7u8; 32]).unwrap();
        assert_eq!(load_or_create_key(dir.path()).unwrap().0, [7u8; 32]);
        assert_eq!(std::fs::read(dir.path().join("secret.key")).unwrap(), [7u8; 32]);
        assert!(!dir.path().join("secret.key.tmp").exists());
    }

    /// A temporary file cut short was never used: a new key replaces it.
    #[test]
    fn a_torn_temporary_file_gives_way_to_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.key.tmp"), [7u8; 5]).unwrap();
        let made = load_or_create_key(dir.path()).unwrap();
        assert_ne!(made.0, [7u8; 32]);
        assert_eq!(std::fs::read(dir.path().join("secret.key")).unwrap(), made.0);
    }

    #[test]
    fn a_key_of_the_wrong_length_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.key"), [1u8; 31]).unwrap();
        let err = load_or_create_key(dir.path()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    }
}
