//! E-mail for report distribution, through lettre: SMTP when `PM_SMTP_URL` is set
//! (`smtp://host:port`, `smtps://...`, lettre's URL syntax), else `.eml` files in
//! `<log dir>/outbox/` (one file per message, RFC 5322, ready for any mail tool).

use super::common::SetupError;
use crate::config::Config;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart, header::ContentType};
use lettre::{AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::path::PathBuf;
use std::time::Duration;

/// How report e-mails leave.
#[derive(Clone)]
pub enum Mailer {
    /// Through an SMTP server.
    Smtp {
        /// The transport (one connection pool).
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// Where it goes, for logs (no credentials).
        server: String,
    },
    /// Into `.eml` files in a directory.
    Files {
        /// The transport.
        transport: AsyncFileTransport<Tokio1Executor>,
        /// The directory.
        dir: PathBuf,
    },
}

/// One file attached to a message.
pub struct MailAttachment {
    /// File name shown to the recipient.
    pub filename: String,
    /// MIME type.
    pub content_type: String,
    /// Content.
    pub bytes: Vec<u8>,
}

impl Mailer {
    /// The mailer of `config`.
    pub fn from_config(config: &Config) -> Result<Self, SetupError> {
        match &config.smtp_url {
            Some(url) => {
                let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| SetupError::Mail(format!("PM_SMTP_URL: {e}")))?
                    .timeout(Some(Duration::from_secs(30)))
                    .build();
                let server = reqwest::Url::parse(url)
                    .ok()
                    .and_then(|u| {
                        u.host_str()
                            .map(|h| format!("{}:{}", h, u.port().unwrap_or(25)))
                    })
                    .unwrap_or_else(|| "smtp".into());
                Ok(Mailer::Smtp { transport, server })
            }
            None => Ok(Mailer::files(config.log_dir.join("outbox"))),
        }
    }

    /// A mailer writing `.eml` files into `dir`.
    pub fn files(dir: PathBuf) -> Self {
        Mailer::Files {
            transport: AsyncFileTransport::new(&dir),
            dir,
        }
    }

    /// `smtp` or `file`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Mailer::Smtp { .. } => "smtp",
            Mailer::Files { .. } => "file",
        }
    }

    /// Sends one message to one recipient; returns where it went (server, or file path).
    pub async fn send(
        &self,
        from: &Mailbox,
        to: &Mailbox,
        subject: &str,
        text: &str,
        attachment: Option<&MailAttachment>,
    ) -> Result<String, String> {
        let builder = Message::builder()
            .from(from.clone())
            .to(to.clone())
            .subject(subject);
        let body = SinglePart::plain(text.to_string());
        let message = match attachment {
            Some(a) => {
                let ct = ContentType::parse(&a.content_type).unwrap_or(ContentType::TEXT_PLAIN);
                builder.multipart(
                    MultiPart::mixed()
                        .singlepart(body)
                        .singlepart(Attachment::new(a.filename.clone()).body(a.bytes.clone(), ct)),
                )
            }
            None => builder.singlepart(body),
        }
        .map_err(|e| format!("cannot build the message: {e}"))?;
        match self {
            Mailer::Smtp { transport, server } => transport
                .send(message)
                .await
                .map(|_| server.clone())
                .map_err(|e| format!("SMTP {server}: {e}")),
            Mailer::Files { transport, dir } => {
                crate::private_files::create_dir_all(dir)
                    .map_err(|e| format!("create {}: {e}", dir.display()))?;
                transport
                    .send(message)
                    .await
                    .map(|id| dir.join(format!("{id}.eml")).display().to_string())
                    .map_err(|e| format!("write to {}: {e}", dir.display()))
            }
        }
    }
}
