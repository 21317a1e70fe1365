//! Mesh templates (`create --template <t>`, `create --list-templates`): a starting shape
//! for a new mesh, applied right after it is created as the ordinary writes any member
//! could make: the creator's groups (a profile change), shared state keys and shared
//! skills (signed ops in the mesh's log). Nothing about a template is special afterwards;
//! every piece can be changed or removed like any other.

use claudemesh_daemon::client::Client;
use claudemesh_schema::ipc::methods::{self as m, ProfileParams, ProfileResult};
use claudemesh_schema::ipc::shared::{self as sh, Actor, ShareSkillParams, StateSetParams};
use serde_json::json;

use crate::exit::{Exit, Failure};

/// One template.
pub(crate) struct Template {
    pub(crate) name: &'static str,
    pub(crate) about: &'static str,
    /// Groups the creator joins (others join with `profile --groups` or `join_group`).
    groups: &'static [&'static str],
    /// Skills shared in the mesh: (name, description, instructions).
    skills: &'static [(&'static str, &'static str, &'static str)],
}

const HANDOFF: (&str, &str, &str) = (
    "handoff",
    "hand work over to another session",
    "Before you stop or switch tasks: 1. set_summary to one line of where you are. 2. share_context with the files you read and what you found. 3. send_message the next session (or @all) what is left, in the order to do it. 4. release_files for everything you reserved.",
);
const REVIEW: (&str, &str, &str) = (
    "review",
    "ask for and give a code review",
    "To ask: send_message the reviewer (or @review) the branch, what changed and what to look at first. To review: reserve_files nothing; read, then reply with findings ordered by severity, each with file:line and a suggested fix. Say plainly when it is good to merge.",
);
const PAIRING: (&str, &str, &str) = (
    "pairing",
    "work as driver and navigator",
    "The driver edits and says what it is about to do before each change; the navigator reads along, checks tests and the plan, and sends corrections with priority `now` only when the driver is about to go wrong. Swap roles at each finished task (send_message `swap`).",
);
const STANDUP: (&str, &str, &str) = (
    "standup",
    "a short status round",
    "Post to @all three lines: done since last time, doing now, blocked on. Keep it to what others need; details go in share_context. Update set_summary to the 'doing now' line.",
);

/// The templates, in the order `--list-templates` shows them.
pub(crate) const TEMPLATES: &[Template] = &[
    Template {
        name: "solo",
        about: "one person, several sessions: a handoff skill, no groups",
        groups: &[],
        skills: &[HANDOFF],
    },
    Template {
        name: "pair",
        about: "two people or sessions working together: pairing and review skills",
        groups: &["pair"],
        skills: &[PAIRING, REVIEW, HANDOFF],
    },
    Template {
        name: "team",
        about: "a team: groups dev, dev/backend, dev/frontend, review, ops; standup, review and handoff skills",
        groups: &["dev"],
        skills: &[STANDUP, REVIEW, HANDOFF],
    },
];

/// The groups the team template sets up, as the shared key `template/groups` lists them
/// (members pick theirs).
fn all_groups(t: &Template) -> Vec<&'static str> {
    match t.name {
        "team" => vec!["dev", "dev/backend", "dev/frontend", "review", "ops"],
        _ => t.groups.to_vec(),
    }
}

/// The template called `name`, or a usage error listing them.
pub(crate) fn find(name: &str) -> Result<&'static Template, Failure> {
    TEMPLATES
        .iter()
        .find(|t| t.name.eq_ignore_ascii_case(name.trim()))
        .ok_or_else(|| {
            Failure::new(
                Exit::Usage,
                format!(
                    "no template {name:?}; the templates are {} (`claudemesh create --list-templates` describes them)",
                    TEMPLATES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                ),
            )
        })
}

/// Apply `t` to the mesh just created (`mesh`, its id): each step an ordinary write.
/// Returns what was done, one line each.
pub(crate) async fn apply(
    c: &mut Client,
    mesh: &str,
    t: &Template,
) -> Result<Vec<String>, Failure> {
    let mut done = Vec::new();
    let actor = || Actor {
        mesh: Some(mesh.to_string()),
        session: None,
        wait_ms: None,
    };
    if !t.groups.is_empty() {
        let _: ProfileResult = c
            .call(
                m::PROFILE,
                ProfileParams {
                    mesh: Some(mesh.to_string()),
                    groups: Some(t.groups.iter().map(|g| g.to_string()).collect()),
                    ..Default::default()
                },
            )
            .await?;
        done.push(format!(
            "you are in {}",
            t.groups
                .iter()
                .map(|g| format!("@{g}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    let _: sh::WriteResult = c
        .call(
            sh::STATE_SET,
            StateSetParams {
                actor: actor(),
                key: "template".into(),
                value: json!({"name": t.name, "groups": all_groups(t)}),
            },
        )
        .await?;
    done.push(format!("shared key `template` = {}", t.name));
    for (name, description, instructions) in t.skills {
        let _: sh::WriteResult = c
            .call(
                sh::SKILL_SHARE,
                ShareSkillParams {
                    actor: actor(),
                    name: name.to_string(),
                    description: description.to_string(),
                    instructions: instructions.to_string(),
                    tags: vec!["template".into()],
                    when_to_use: String::new(),
                },
            )
            .await?;
    }
    if !t.skills.is_empty() {
        done.push(format!(
            "skills {}",
            t.skills.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_groups_and_skills_follow_the_name_rules() {
        for t in TEMPLATES {
            for g in all_groups(t) {
                assert_eq!(claudemesh_schema::names::check_group(g).unwrap(), g);
            }
            for (name, ..) in t.skills {
                assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            }
        }
        assert!(find("TEAM").is_ok());
        assert_eq!(find("nope").err().map(|f| f.code), Some(Exit::Usage));
    }
}
