//! The library's error types for what is not a client's fault: an instance that cannot start,
//! and a broker that fails. They name no dependency's types, so a new Redis client version is
//! not a breaking change.

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Redis answered something this layout does not expect.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

#[cfg(feature = "redis")]
impl BrokerError {
    /// Wraps an error of the Redis client (whose type is not part of our API).
    pub(crate) fn redis(e: ::redis::RedisError) -> Self {
        BrokerError::Redis(Box::new(e))
    }
}

/// Why an instance could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Redis URL is invalid.
    #[error("invalid redis URL: {0}")]
    RedisUrl(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A setting cannot work (a zero period, a zero queue); the message names it.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A Redis URL was given to a build without the `redis` feature.
    #[error("this build of redisse has no Redis support (cargo feature `redis`)")]
    RedisNotBuilt,
    /// The broker did not answer when the instance started ([`crate::Redisse::connect`]).
    #[error("{message}{}", waited.map(|w| format!(", still after waiting {w:?}")).unwrap_or_default())]
    BrokerUnreachable {
        /// The broker (named without its password) and the cause: `Redis redis://10.0.0.1:6379/0:
        /// connection refused`, `...: authentication failed (WRONGPASS: ...)`, `...: not a
        /// Redis server ...`, `...: cannot resolve the host ...`, `...: no answer`.
        message: String,
        /// How long it was waited for, when waiting longer might have helped (refused, no
        /// answer, an unknown host); `None` when it cannot (a wrong password, not Redis).
        waited: Option<std::time::Duration>,
    },
    /// The broker could not be set up.
    #[error(transparent)]
    Broker(#[from] BrokerError),
}
