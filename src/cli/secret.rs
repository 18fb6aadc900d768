//! `tagbridge secret`: a new webhook URL secret and the config line that
//! matches it. Apart because it needs no configuration and no cluster.

use std::io::Write;

use super::CliError;

/// `tagbridge secret`: 256 random bits, URL-safe, and its sha256.
///
/// # Errors
///
/// The system random source fails (never on Linux).
pub fn secret(out: &mut dyn Write) -> Result<(), CliError> {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CliError::Other("the system random source failed".into()))?;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ));
    writeln!(
        out,
        "# Give the registry this URL path (keep it secret; it is not stored anywhere):"
    )?;
    writeln!(out, "/hooks/{secret}")?;
    writeln!(
        out,
        "# Put this line in the service block of tagbridge.hcl:"
    )?;
    writeln!(out, "secret_sha256 = \"{hash}\"")?;
    Ok(())
}
