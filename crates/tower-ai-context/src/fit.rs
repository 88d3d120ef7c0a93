//! Fitting what was gathered into a token budget, and the system messages
//! it becomes.

use tower_ai_core::llm::estimated_tokens;

use crate::sources::{Message, Passage};

/// Tokens of a message's framing (as `tower-ai-core` counts them).
const PER_MESSAGE: u64 = 4;

/// What was gathered for one request.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    pub(crate) passages: Vec<Passage>,
    /// Oldest first.
    pub(crate) history: Vec<Message>,
    pub(crate) profile: Vec<(String, String)>,
}

/// What goes in: the system messages, and what they hold.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Fitted {
    pub(crate) messages: Vec<String>,
    pub(crate) passages: usize,
    pub(crate) history: usize,
    pub(crate) profile: usize,
    pub(crate) tokens: u64,
}

const PASSAGES: &str =
    "Passages retrieved for the user's question (use them when they help; they may be incomplete):";
const PROFILE: &str = "About the user:";
const HISTORY: &str = "Earlier in this conversation (oldest first):";

fn tokens(text: &str) -> u64 {
    estimated_tokens(text.len())
}

/// Fits `gathered` into `room` tokens by priority: passages by score, then
/// history newest first (a run of the newest turns: an older turn never
/// goes in without the newer ones), then profile fields in order. A block's
/// heading and framing count when its first item goes in.
pub(crate) fn fit(mut gathered: Gathered, room: u64) -> Fitted {
    let mut left = room;
    let mut take = |cost: u64, opened: &mut bool, heading: &str| -> bool {
        let cost = if *opened {
            cost
        } else {
            cost + tokens(heading) + PER_MESSAGE
        };
        if cost > left {
            return false;
        }
        left -= cost;
        *opened = true;
        true
    };

    gathered
        .passages
        .sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut opened = false;
    let mut passages = Vec::new();
    for passage in &gathered.passages {
        let line = format!("[{}] {}", passages.len() + 1, passage.text);
        if take(tokens(&line) + 1, &mut opened, PASSAGES) {
            passages.push(line);
        }
    }

    let mut opened = false;
    let mut history = Vec::new();
    for turn in gathered.history.iter().rev() {
        let line = format!("{}: {}", turn.role, turn.content);
        if !take(tokens(&line) + 1, &mut opened, HISTORY) {
            break;
        }
        history.push(line);
    }
    history.reverse();

    let mut opened = false;
    let mut profile = Vec::new();
    for (field, value) in &gathered.profile {
        let line = format!("{field}: {value}");
        if take(tokens(&line) + 1, &mut opened, PROFILE) {
            profile.push(line);
        }
    }

    let mut fitted = Fitted {
        passages: passages.len(),
        history: history.len(),
        profile: profile.len(),
        tokens: room - left,
        messages: Vec::new(),
    };
    for (heading, lines) in [(PROFILE, profile), (PASSAGES, passages), (HISTORY, history)] {
        if !lines.is_empty() {
            fitted
                .messages
                .push(format!("{heading}\n{}", lines.join("\n")));
        }
    }
    fitted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(text: &str, score: f32) -> Passage {
        Passage {
            id: text.into(),
            text: text.into(),
            score,
        }
    }

    #[test]
    fn priority_order_and_boundaries() {
        let gathered = || Gathered {
            passages: vec![passage(&"b".repeat(40), 0.5), passage(&"a".repeat(40), 0.9)],
            history: vec![
                Message::new("user", "x".repeat(36)),
                Message::new("assistant", "y".repeat(30)),
                Message::new("user", "z".repeat(36)),
            ],
            profile: vec![("name".into(), "Ada".into())],
        };
        // Everything fits.
        let all = fit(gathered(), 10_000);
        assert_eq!((all.passages, all.history, all.profile), (2, 3, 1));
        assert!(all.messages[1].starts_with(PASSAGES));
        assert!(
            all.messages[1].contains(&format!("[1] {}", "a".repeat(40))),
            "best first"
        );
        assert!(
            all.messages[2].ends_with(&"z".repeat(36)),
            "history oldest first"
        );
        let total = all.tokens;

        // One token short of everything: the profile (last priority) goes.
        let short = fit(gathered(), total - 1);
        assert_eq!((short.passages, short.history, short.profile), (2, 3, 0));
        assert!(short.tokens < total);

        // Room for the passages' block alone.
        let passages_only = fit(gathered(), all_passages_cost());
        assert_eq!(
            (
                passages_only.passages,
                passages_only.history,
                passages_only.profile
            ),
            (2, 0, 0)
        );
        assert_eq!(passages_only.tokens, all_passages_cost());

        // No room: nothing, and no empty message.
        let none = fit(gathered(), 3);
        assert_eq!(none, Fitted::default());
    }

    fn all_passages_cost() -> u64 {
        tokens(PASSAGES) + PER_MESSAGE + 2 * (tokens(&format!("[1] {}", "a".repeat(40))) + 1)
    }

    #[test]
    fn history_is_the_newest_run() {
        let gathered = Gathered {
            history: vec![
                Message::new("user", "old short"),
                Message::new("assistant", "n".repeat(400)),
                Message::new("user", "newest"),
            ],
            ..Gathered::default()
        };
        // The middle turn doesn't fit: the oldest is not taken over it.
        let fitted = fit(gathered, 40);
        assert_eq!(fitted.history, 1);
        assert!(fitted.messages[0].ends_with("user: newest"));
    }
}
