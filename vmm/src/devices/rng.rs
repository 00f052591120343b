//! Entropy: the `entropy` config section as a virtio-rng device.

use api::{EntropyConfig, VmConfig};
use devices::rate_limiter::RateLimiter;
use devices::virtio::rng::Rng;

use super::block::rate_limiter;
use super::DeviceKind;

/// The `entropy` registration (at most one device).
pub struct RngKind;

impl DeviceKind for RngKind {
    type Device = Rng;
    type Config = EntropyConfig;
    type Patch = ();

    const KIND: &'static str = "rng";
    const SECTION: &'static str = "entropy";

    fn configs(config: &VmConfig) -> Vec<&EntropyConfig> {
        config.entropy.iter().collect()
    }

    /// There is only one.
    fn id(_config: &EntropyConfig) -> &str {
        "entropy"
    }

    /// The configured limits (none: unlimited, with the timer registered
    /// all the same).
    fn args(config: &EntropyConfig) -> Result<Option<RateLimiter>, String> {
        rate_limiter(&config.rate_limiter).map_err(|e| format!("rate limiter: {e}"))
    }

    fn create(args: Option<RateLimiter>) -> Result<Rng, String> {
        Rng::new(args).map_err(|e| e.to_string())
    }
}
