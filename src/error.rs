//! The crate's one public error type.

use std::fmt;

/// What went wrong, for callers that branch on it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The input (a layer, a digest, an argument) is malformed or unsupported.
    InvalidInput,
    /// Stored data failed a check: a hash, a length, a format header.
    Corrupt,
    /// The named layer, chunk, file or pack does not exist.
    NotFound,
    /// A digest prefix matched more than one layer.
    Ambiguous,
    /// The store's configuration conflicts with what was asked.
    Config,
    /// Another process holds the store open.
    Busy,
    /// An operating-system or storage I/O failure.
    Io,
    /// An internal index failure.
    Index,
    /// A token is missing, invalid, expired, or does not allow the request.
    Denied,
    /// A write-once object (a pack) already exists under that name.
    AlreadyExists,
}

/// An error with a kind, a message for people, and the underlying cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Shorthand for this crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), source: None }
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message without the cause.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Prefix the message with context, keeping kind and source.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    pub(crate) fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub(crate) fn io(message: impl Into<String>, e: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, message).with_source(e)
    }
    pub(crate) fn index(e: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::new(ErrorKind::Index, "index error").with_source(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(s) = &self.source {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|s| s.as_ref() as _)
    }
}

/// Lets `std::io::Read` implementations carry our errors and get them back.
impl From<Error> for std::io::Error {
    fn from(e: Error) -> Self {
        std::io::Error::other(e)
    }
}

/// Recover our error from an `io::Error` built by the `From` above, else wrap it.
pub(crate) fn from_io(e: std::io::Error, what: impl fmt::Display) -> Error {
    if e.get_ref().is_some_and(|r| r.is::<Error>()) {
        let inner = e.into_inner().expect("checked above");
        return *inner.downcast::<Error>().expect("checked above");
    }
    Error::io(what.to_string(), e)
}

macro_rules! index_err {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self { Error::index(e) }
        }
    )*};
}
index_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
