//! Built-in reward rules over whole columns.
//!
//! The embedded task's rule (`grao_pipe/tasks/arith.py`): prompts `a+b=`, reward
//! R(o, y) = correct(o) − correct(y) ∈ {−1, 0, +1}, where an answer is correct if its leading
//! integer (after whitespace) is the sum. The Python `score_one` is the specification; this is
//! the same rule without a regex engine, one pass over each row's bytes.

// The Python binding (`arith_rewards`), beside the kernel it binds.
#[cfg(feature = "python")]
pub(crate) mod py;

/// `s` without its leading whitespace (Unicode White_Space, as regex `\s`).
fn skip_ws(s: &str) -> &str {
    s.trim_start_matches(char::is_whitespace)
}

/// The leading run of ASCII digits of `s` as an integer (None if there is none or it does not
/// fit an i64), and the rest of `s`.
fn leading_int(s: &str) -> Option<(i64, &str)> {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// a + b for a prompt matching `^\s*([0-9]+)\s*\+\s*([0-9]+)\s*=\s*$`; None otherwise.
pub fn arith_sum(prompt: &str) -> Option<i64> {
    let (a, rest) = leading_int(skip_ws(prompt))?;
    let rest = skip_ws(rest).strip_prefix('+')?;
    let (b, rest) = leading_int(skip_ws(rest))?;
    let rest = skip_ws(rest).strip_prefix('=')?;
    if !skip_ws(rest).is_empty() {
        return None;
    }
    a.checked_add(b)
}

fn arith_correct(answer: Option<&str>, sum: i64) -> bool {
    answer.and_then(|a| leading_int(skip_ws(a))).map(|(v, _)| v) == Some(sum)
}

/// R(o, y) for one row: None (an invalid row) when the prompt is not `a+b=`.
pub fn arith_reward(
    prompt: Option<&str>,
    response: Option<&str>,
    reference: Option<&str>,
) -> Option<f64> {
    let sum = arith_sum(prompt?)?;
    Some(
        f64::from(u8::from(arith_correct(response, sum)))
            - f64::from(u8::from(arith_correct(reference, sum))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_of_score_one() {
        assert_eq!(arith_reward(Some("3+4="), Some("7"), Some("7")), Some(0.0));
        assert_eq!(arith_reward(Some("3+4="), Some("8"), Some("7")), Some(-1.0));
        assert_eq!(
            arith_reward(Some(" 3 + 4 = "), Some(" 7 is it"), Some("6")),
            Some(1.0)
        );
        assert_eq!(
            arith_reward(Some("3+4=\n"), Some("\t007"), Some("")),
            Some(1.0)
        );
        assert_eq!(
            arith_reward(Some("3\u{3000}+4="), Some("7"), None),
            Some(1.0)
        );
    }

    #[test]
    fn prompts_not_of_the_form_are_invalid() {
        for p in [
            "oops", "12+7", "+3=", "3+=", "3+4=x", "3++4=", "3+4==", "-3+4=", "٣+4=",
        ] {
            assert_eq!(arith_reward(Some(p), Some("7"), Some("7")), None, "{p:?}");
        }
        assert_eq!(arith_reward(None, Some("7"), Some("7")), None);
        // Operands and sums must fit an i64.
        assert_eq!(arith_sum("99999999999999999999+1="), None);
        assert_eq!(arith_sum("9223372036854775807+1="), None);
        assert_eq!(arith_sum("9223372036854775806+1="), Some(i64::MAX));
    }

    #[test]
    fn answers_are_their_leading_ascii_integer() {
        let r = |o: &str| arith_reward(Some("3+4="), Some(o), Some("0"));
        assert_eq!(r("7x"), Some(1.0));
        assert_eq!(r("x7"), Some(0.0));
        assert_eq!(r("3 4"), Some(0.0));
        assert_eq!(r("٧"), Some(0.0)); // an Arabic-Indic 7 is not an ASCII digit
        assert_eq!(r("99999999999999999999"), Some(0.0));
    }
}
