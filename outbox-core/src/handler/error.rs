//! What a handler returns: its error (retried or permanent) and the results that convert into
//! it.

use std::fmt;

use crate::error::{BoxError, Error, Result};

/// The error a handler returns: retried with back-off unless it is [permanent](Self::permanent).
///
/// Any `Result<(), E>` with `E: Into<Box<dyn Error + Send + Sync>>` (including `anyhow::Result`)
/// converts into it; return a `HandlerError` yourself to mark a failure permanent.
#[derive(Debug)]
pub struct HandlerError {
    permanent: bool,
    source: BoxError,
}

impl HandlerError {
    /// A failure worth retrying (a timeout, a 503, a lost connection).
    pub fn retry(source: impl Into<BoxError>) -> Self {
        Self {
            permanent: false,
            source: source.into(),
        }
    }

    /// A failure that retrying cannot fix: the delivery is dead at once.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self {
            permanent: true,
            source: source.into(),
        }
    }

    /// Wraps any boxed error: a `HandlerError` inside stays as it is (permanent or not), a core
    /// [`Error`] keeps its retryability, anything else is retried.
    pub fn from_boxed(boxed: BoxError) -> Self {
        let boxed = match boxed.downcast::<HandlerError>() {
            Ok(h) => return *h,
            Err(other) => other,
        };
        let boxed = match boxed.downcast::<Error>() {
            Ok(e) => return HandlerError::from(*e),
            Err(other) => other,
        };
        // Wrapped on the way (`anyhow`, an error with context): a permanent `HandlerError`
        // inside shows its mark in the chain of sources.
        let mut link: Option<&(dyn std::error::Error + 'static)> = Some(&*boxed);
        let mut permanent = false;
        while let Some(e) = link {
            if e.is::<Permanent>() {
                permanent = true;
                break;
            }
            link = e.source();
        }
        Self {
            permanent,
            source: boxed,
        }
    }

    /// Whether the failure is permanent.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// Turns it into the relay's [`Error`], naming the handler.
    pub fn into_error(self, handler: &str) -> Error {
        match self.source.downcast::<Error>() {
            // Keep the core error's own kind when the flag agrees with it.
            Ok(e) if e.is_retryable() != self.permanent => *e,
            Ok(e) => Error::HandlerFailed {
                handler: handler.to_owned(),
                permanent: self.permanent,
                source: e,
            },
            Err(source) => Error::HandlerFailed {
                handler: handler.to_owned(),
                permanent: self.permanent,
                source,
            },
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if self.permanent {
            // The mark survives wrapping (`anyhow`, context), which hides this type itself.
            Some(&Permanent)
        } else {
            self.source.source()
        }
    }
}

/// The mark of a permanent failure in a chain of errors.
#[derive(Debug)]
struct Permanent;

impl fmt::Display for Permanent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("permanent failure, not retried")
    }
}

impl std::error::Error for Permanent {}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        Self {
            permanent: !e.is_retryable(),
            source: Box::new(e),
        }
    }
}

/// What an event handler may return: `()` or `Result<(), E>` for any error convertible into
/// `Box<dyn Error + Send + Sync>` (`anyhow::Result<()>`, `Result<(), HandlerError>`, ...).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a valid event handler return type",
    label = "handlers return `()` or `Result<(), E>`",
    note = "use `anyhow::Result<()>`, `Result<(), HandlerError>` or any `Result<(), E>` where `E: std::error::Error + Send + Sync + 'static`"
)]
pub trait IntoHandlerResult {
    /// Converts into the relay's view of the outcome.
    fn into_handler_result(self) -> Result<(), HandlerError>;
}

impl IntoHandlerResult for () {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> Result<(), HandlerError> {
        self.map_err(|e| HandlerError::from_boxed(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permanent_error_stays_permanent_through_anyhow_and_boxes() {
        let through_anyhow: Result<(), anyhow::Error> =
            Err(HandlerError::permanent(std::io::Error::other("never valid")).into());
        assert!(
            through_anyhow
                .into_handler_result()
                .unwrap_err()
                .is_permanent()
        );
        let nested: Result<(), anyhow::Error> = Err(anyhow::Error::from(HandlerError::permanent(
            std::io::Error::other("x"),
        ))
        .context("while mailing"));
        assert!(nested.into_handler_result().unwrap_err().is_permanent());
        let boxed: Result<(), BoxError> = Err(Box::new(HandlerError::permanent("y")));
        assert!(boxed.into_handler_result().unwrap_err().is_permanent());
        let plain: Result<(), std::io::Error> = Err(std::io::Error::other("z"));
        assert!(!plain.into_handler_result().unwrap_err().is_permanent());
    }
}
