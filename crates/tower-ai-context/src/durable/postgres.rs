//! [`PostgresSink`]: conversations in a PostgreSQL table.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

use super::{ConversationSink, SinkError, Turn};
use crate::index::BoxFuture;

const DEFAULT_TABLE: &str = "tower_ai_conversation_turns";

/// Builds a [`PostgresSink`].
#[derive(Debug, Clone)]
#[must_use]
pub struct PostgresSinkBuilder {
    url: String,
    table: String,
    create_table: bool,
    connect_timeout: Duration,
    operation_timeout: Duration,
}

impl PostgresSinkBuilder {
    /// The table (default `tower_ai_conversation_turns`): a name or
    /// `schema.name`, each part an identifier of ASCII letters, digits, `_`
    /// and `$`, not starting with a digit, at most 63 bytes. It is quoted,
    /// so its case is kept.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Whether the sink creates the table (and its primary key) when it is
    /// missing, on each connection (default: yes). Turn it off when the
    /// sink's role may not create tables; the table must then exist with the
    /// columns described on [`PostgresSink`].
    pub fn create_table(mut self, create_table: bool) -> Self {
        self.create_table = create_table;
        self
    }

    /// How long connecting (and creating the table) may take (default 5 s).
    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    /// How long one write or read may take once connected (default 10 s);
    /// past it the call fails and the connection is dropped.
    pub fn operation_timeout(mut self, operation_timeout: Duration) -> Self {
        self.operation_timeout = operation_timeout;
        self
    }

    /// The sink, not connected yet: it connects on its first call, so it
    /// can be built while PostgreSQL is down.
    ///
    /// # Errors
    /// [`SinkError::Config`] when the URL doesn't parse, asks for TLS
    /// (`sslmode=require`: not supported) or the table name isn't valid.
    pub fn build(self) -> Result<PostgresSink, SinkError> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| SinkError::Config(format!("the PostgreSQL URL: {e}")))?;
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer) {
            return Err(SinkError::Config(
                "TLS to PostgreSQL is not supported: use sslmode=disable or prefer, a Unix socket \
                 or a local TLS proxy"
                    .into(),
            ));
        }
        config.connect_timeout(self.connect_timeout);
        let table = quoted_table(&self.table)?;
        Ok(PostgresSink {
            sql: Sql::new(&table),
            table: self.table,
            config,
            create_table: self.create_table,
            connect_timeout: self.connect_timeout,
            operation_timeout: self.operation_timeout,
            conn: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// The sink, connected, with its table created if missing.
    ///
    /// # Errors
    /// [`SinkError::Config`] as for [`build`](Self::build);
    /// [`SinkError::Unavailable`] when PostgreSQL can't be reached or
    /// refuses the table.
    pub async fn connect(self) -> Result<PostgresSink, SinkError> {
        let sink = self.build()?;
        sink.connection().await?;
        Ok(sink)
    }
}

/// A [`ConversationSink`] on a PostgreSQL table, through `tokio-postgres`
/// (plain TCP or a Unix socket; no TLS).
///
/// The table, created when missing:
///
/// ```sql
/// CREATE TABLE IF NOT EXISTS tower_ai_conversation_turns (
///     conversation text        NOT NULL,
///     turn         bigint      NOT NULL CHECK (turn >= 0),
///     role         text        NOT NULL,
///     content      text        NOT NULL,
///     tokens       bigint,
///     written_at   timestamptz NOT NULL DEFAULT now(),
///     PRIMARY KEY (conversation, turn)
/// )
/// ```
///
/// A [`write`](ConversationSink::write) is one statement, one round trip:
/// `INSERT … SELECT * FROM UNNEST($1, …) ON CONFLICT (conversation, turn)
/// DO UPDATE`, so **the last write of a position wins** (a regenerated
/// answer replaces the stored one) and a retried write is a no-op (a row
/// whose role, content and tokens are unchanged is left alone, `written_at`
/// included). When one write holds a position twice, the later turn is the
/// one written. A [`read`](ConversationSink::read) is one indexed query.
///
/// The sink holds one connection and connects lazily: when PostgreSQL goes
/// away the connection ends, and the next call connects again (within the
/// [connect timeout](PostgresSinkBuilder::connect_timeout), creating the
/// table if it is missing). Calls never panic: errors are
/// [`SinkError::Unavailable`] (worth retrying) or, for turns PostgreSQL can
/// never hold (a NUL character, a position or token count above
/// `i64::MAX`), [`SinkError::Rejected`].
///
/// ```no_run
/// # async fn demo() -> Result<(), tower_ai_context::durable::SinkError> {
/// use std::sync::Arc;
/// use tower_ai_context::durable::{ConversationSink, DurableConfig, DurableWriter, PostgresSink, Turn};
///
/// let sink = Arc::new(PostgresSink::builder("postgres://app@db.internal/chat").build()?);
/// let writer = DurableWriter::spawn(sink.clone(), DurableConfig::default());
/// writer.record(Turn::new("session-42", 0, "user", "Hi")).ok();
/// writer.end("session-42");
/// writer.flush().await.ok();
/// let turns = sink.read("session-42").await?;
/// # Ok(()) }
/// ```
pub struct PostgresSink {
    config: tokio_postgres::Config,
    table: String,
    sql: Sql,
    create_table: bool,
    connect_timeout: Duration,
    operation_timeout: Duration,
    /// The current connection, if any (it may have closed since).
    conn: parking_lot::Mutex<Option<Arc<Conn>>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

struct Conn {
    client: Client,
    upsert: Statement,
    select: Statement,
}

struct Sql {
    create: String,
    upsert: String,
    select: String,
}

impl Sql {
    fn new(table: &str) -> Self {
        Self {
            create: format!(
                "CREATE TABLE IF NOT EXISTS {table} (\
                 conversation text NOT NULL, \
                 turn bigint NOT NULL CHECK (turn >= 0), \
                 role text NOT NULL, \
                 content text NOT NULL, \
                 tokens bigint, \
                 written_at timestamptz NOT NULL DEFAULT now(), \
                 PRIMARY KEY (conversation, turn))"
            ),
            upsert: format!(
                "INSERT INTO {table} AS t (conversation, turn, role, content, tokens) \
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], \
                 $5::bigint[]) \
                 ON CONFLICT (conversation, turn) DO UPDATE SET \
                 role = EXCLUDED.role, content = EXCLUDED.content, tokens = EXCLUDED.tokens, \
                 written_at = now() \
                 WHERE (t.role, t.content, t.tokens) \
                 IS DISTINCT FROM (EXCLUDED.role, EXCLUDED.content, EXCLUDED.tokens)"
            ),
            select: format!(
                "SELECT conversation, turn, role, content, tokens FROM {table} \
                 WHERE conversation = $1 ORDER BY turn"
            ),
        }
    }
}

impl PostgresSink {
    /// A sink on `url` (e.g. `postgres://user:password@host:5432/db`, or
    /// `host=/var/run/postgresql user=app dbname=chat`) with the default
    /// table: connected, table created if missing.
    ///
    /// # Errors
    /// As [`PostgresSinkBuilder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Self, SinkError> {
        Self::builder(url).connect().await
    }

    /// A builder for a sink on `url`.
    pub fn builder(url: impl Into<String>) -> PostgresSinkBuilder {
        PostgresSinkBuilder {
            url: url.into(),
            table: DEFAULT_TABLE.to_owned(),
            create_table: true,
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(10),
        }
    }

    /// The table's name, as configured.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Whether a connection is open now (without trying one).
    pub fn is_connected(&self) -> bool {
        self.conn
            .lock()
            .as_ref()
            .is_some_and(|c| !c.client.is_closed())
    }

    /// The open connection, or a new one.
    async fn connection(&self) -> Result<Arc<Conn>, SinkError> {
        if let Some(conn) = self.open_connection() {
            return Ok(conn);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(conn) = self.open_connection() {
            return Ok(conn);
        }
        let conn = match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Ok(Ok(conn)) => Arc::new(conn),
            Ok(Err(e)) => return Err(unavailable("connecting", &e)),
            Err(_) => {
                return Err(SinkError::Unavailable(format!(
                    "connecting timed out after {:?}",
                    self.connect_timeout
                )));
            }
        };
        *self.conn.lock() = Some(Arc::clone(&conn));
        tracing::debug!(table = %self.table, "connected to PostgreSQL");
        Ok(conn)
    }

    fn open_connection(&self) -> Option<Arc<Conn>> {
        let mut current = self.conn.lock();
        match &*current {
            Some(conn) if !conn.client.is_closed() => Some(Arc::clone(conn)),
            Some(_) => {
                *current = None;
                None
            }
            None => None,
        }
    }

    async fn open(&self) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = self.config.connect(NoTls).await?;
        // The connection ends when the server goes away (or the client is
        // dropped); the client then reports closed and the next call
        // connects again.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "PostgreSQL connection ended");
            }
        });
        if self.create_table
            && let Err(e) = client.batch_execute(&self.sql.create).await
        {
            // Two sinks creating the table at once: one loses the race on
            // the catalog, and the table is there.
            let raced = e.code().is_some_and(|code| {
                *code == SqlState::UNIQUE_VIOLATION || *code == SqlState::DUPLICATE_TABLE
            });
            if !raced {
                return Err(e);
            }
        }
        let upsert = client.prepare(&self.sql.upsert).await?;
        let select = client.prepare(&self.sql.select).await?;
        Ok(Conn {
            client,
            upsert,
            select,
        })
    }

    /// Forgets `conn` after a failure, so the next call connects again (a
    /// statement prepared on a dropped table, a timed-out call).
    fn discard(&self, conn: &Arc<Conn>) {
        let mut current = self.conn.lock();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
        }
    }

    async fn upsert(&self, turns: &[Turn]) -> Result<(), SinkError> {
        let turns = last_per_position(turns);
        if turns.is_empty() {
            return Ok(());
        }
        let mut conversations = Vec::with_capacity(turns.len());
        let mut indexes = Vec::with_capacity(turns.len());
        let mut roles = Vec::with_capacity(turns.len());
        let mut contents = Vec::with_capacity(turns.len());
        let mut tokens = Vec::with_capacity(turns.len());
        for turn in turns {
            let index = i64::try_from(turn.index).map_err(|_| {
                rejected(
                    turn,
                    format_args!("position {} is above i64::MAX", turn.index),
                )
            })?;
            let turn_tokens = turn
                .tokens
                .map(i64::try_from)
                .transpose()
                .map_err(|_| rejected(turn, format_args!("a token count above i64::MAX")))?;
            for (field, text) in [
                ("conversation", &turn.conversation),
                ("role", &turn.role),
                ("content", &turn.content),
            ] {
                if text.contains('\0') {
                    return Err(rejected(
                        turn,
                        format_args!("its {field} holds a NUL character"),
                    ));
                }
            }
            conversations.push(turn.conversation.as_str());
            indexes.push(index);
            roles.push(turn.role.as_str());
            contents.push(turn.content.as_str());
            tokens.push(turn_tokens);
        }
        let conn = self.connection().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
            [&conversations, &indexes, &roles, &contents, &tokens];
        let call = conn.client.execute(&conn.upsert, &params);
        match tokio::time::timeout(self.operation_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                self.discard(&conn);
                Err(classify("writing", &e))
            }
            Err(_) => {
                self.discard(&conn);
                Err(SinkError::Unavailable(format!(
                    "writing timed out after {:?}",
                    self.operation_timeout
                )))
            }
        }
    }

    async fn select(&self, conversation: &str) -> Result<Vec<Turn>, SinkError> {
        let conn = self.connection().await?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&conversation];
        let call = conn.client.query(&conn.select, &params);
        let rows = match tokio::time::timeout(self.operation_timeout, call).await {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                self.discard(&conn);
                return Err(classify("reading", &e));
            }
            Err(_) => {
                self.discard(&conn);
                return Err(SinkError::Unavailable(format!(
                    "reading timed out after {:?}",
                    self.operation_timeout
                )));
            }
        };
        rows.iter()
            .map(|row| {
                let bad = |e: tokio_postgres::Error| unavailable("reading a row", &e);
                let index: i64 = row.try_get(1).map_err(bad)?;
                let tokens: Option<i64> = row.try_get(4).map_err(bad)?;
                let out_of_range =
                    || SinkError::Unavailable("a stored turn has a negative number".into());
                Ok(Turn {
                    conversation: row.try_get(0).map_err(bad)?,
                    index: u64::try_from(index).map_err(|_| out_of_range())?,
                    role: row.try_get(2).map_err(bad)?,
                    content: row.try_get(3).map_err(bad)?,
                    tokens: tokens
                        .map(u64::try_from)
                        .transpose()
                        .map_err(|_| out_of_range())?,
                })
            })
            .collect()
    }
}

impl ConversationSink for PostgresSink {
    fn write<'a>(&'a self, turns: &'a [Turn]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.upsert(turns))
    }

    fn read<'a>(&'a self, conversation: &'a str) -> BoxFuture<'a, Result<Vec<Turn>, SinkError>> {
        Box::pin(self.select(conversation))
    }
}

impl fmt::Debug for PostgresSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresSink")
            .field("hosts", &self.config.get_hosts())
            .field("ports", &self.config.get_ports())
            .field("dbname", &self.config.get_dbname())
            .field("table", &self.table)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// The turns to write: the last one of each (conversation, index), in their
/// order (`ON CONFLICT DO UPDATE` may not touch a row twice in one
/// statement).
fn last_per_position(turns: &[Turn]) -> Vec<&Turn> {
    let mut seen = std::collections::HashSet::with_capacity(turns.len());
    let mut out: Vec<&Turn> = turns
        .iter()
        .rev()
        .filter(|t| seen.insert((t.conversation.as_str(), t.index)))
        .collect();
    out.reverse();
    out
}

/// `name` or `schema.name`, validated and double-quoted.
fn quoted_table(table: &str) -> Result<String, SinkError> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|part| is_identifier(part)) {
        return Err(SinkError::Config(format!(
            "table {table:?} is not a name or schema.name of ASCII letters, digits, `_` and `$` \
             (not starting with a digit, at most 63 bytes each)"
        )));
    }
    Ok(parts
        .iter()
        .map(|part| format!("\"{part}\""))
        .collect::<Vec<_>>()
        .join("."))
}

fn is_identifier(part: &str) -> bool {
    let mut chars = part.chars();
    part.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn rejected(turn: &Turn, reason: fmt::Arguments<'_>) -> SinkError {
    SinkError::Rejected(format!(
        "turn {} of conversation {:?}: {reason}",
        turn.index, turn.conversation
    ))
}

fn unavailable(doing: &str, e: &tokio_postgres::Error) -> SinkError {
    SinkError::Unavailable(format!("{doing}: {}", describe(e)))
}

/// A server error about the data itself (SQLSTATE class 22, or 54: a
/// program limit) is permanent; anything else may pass.
fn classify(doing: &str, e: &tokio_postgres::Error) -> SinkError {
    let permanent = e.code().is_some_and(|code| {
        let code = code.code();
        code.starts_with("22") || code.starts_with("54")
    });
    if permanent {
        SinkError::Rejected(format!("{doing}: {}", describe(e)))
    } else {
        unavailable(doing, e)
    }
}

/// The error with its server message, when there is one (the `Display` of
/// a `tokio_postgres::Error` alone says "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                text.push_str(": ");
                text.push_str(&inner.to_string());
                source = inner.source();
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_validated_and_quoted() {
        assert_eq!(
            quoted_table("tower_ai_conversation_turns").as_deref(),
            Ok("\"tower_ai_conversation_turns\"")
        );
        assert_eq!(
            quoted_table("chat.Turns$1").as_deref(),
            Ok("\"chat\".\"Turns$1\"")
        );
        for bad in [
            "",
            "1turns",
            "turns; drop table x",
            "a.b.c",
            "a.",
            "\"quoted\"",
            "tür",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(quoted_table(bad), Err(SinkError::Config(_))),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn a_bad_url_or_tls_is_a_config_error() {
        assert!(matches!(
            PostgresSink::builder("postgres://h/db?sslmode=require").build(),
            Err(SinkError::Config(_))
        ));
        assert!(matches!(
            PostgresSink::builder("postgres://h/db").table("1x").build(),
            Err(SinkError::Config(_))
        ));
        assert!(matches!(
            PostgresSink::builder("postgres://h:notaport/db").build(),
            Err(SinkError::Config(_))
        ));
        let sink = PostgresSink::builder("postgres://app@h/db").build();
        assert!(sink.is_ok_and(|s| !s.is_connected()));
    }

    #[test]
    fn a_batch_keeps_the_last_turn_of_each_position() {
        let turns = [
            Turn::new("a", 0, "user", "first"),
            Turn::new("a", 1, "assistant", "x"),
            Turn::new("a", 0, "user", "second"),
            Turn::new("b", 0, "user", "other"),
        ];
        let kept: Vec<(&str, u64, &str)> = last_per_position(&turns)
            .iter()
            .map(|t| (t.conversation.as_str(), t.index, t.content.as_str()))
            .collect();
        assert_eq!(kept, [("a", 1, "x"), ("a", 0, "second"), ("b", 0, "other")]);
    }
}
