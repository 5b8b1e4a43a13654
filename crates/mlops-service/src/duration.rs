//! Durations as people write them in specs and settings.

/// Parses `"90s"`, `"15m"`, `"1h30m"`, `"7d"`, `"250ms"` into milliseconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let invalid = || format!("expected a duration like \"15m\", \"1h30m\" or \"7d\", got {text:?}");
    let mut total: i64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(invalid());
        }
        let amount: i64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(invalid()),
        };
        rest = &rest[unit_len..];
        total = amount
            .checked_mul(unit)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(invalid)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_milliseconds() {
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("250ms"), Ok(250));
        assert_eq!(parse_duration("7d"), Ok(604_800_000));
        assert!(
            parse_duration("ten minutes")
                .unwrap_err()
                .contains("\"ten minutes\"")
        );
        assert!(parse_duration("5").is_err());
    }
}
