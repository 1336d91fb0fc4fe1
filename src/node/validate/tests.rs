use raft::eraftpb::{Entry, Message, MessageType};

use super::*;

const LEADER: ReplicaId = 1;
const MEMBER: ReplicaId = 2;
const STRANGER: ReplicaId = 99;

fn local() -> LocalView {
    LocalView {
        term: 5,
        last_index: 100,
        leader: LEADER,
        initialized: true,
    }
}

fn is_member(replica: ReplicaId) -> bool {
    replica == LEADER || replica == MEMBER
}

fn message(kind: MessageType, from: ReplicaId, term: u64) -> Message {
    let mut msg = Message::default();
    msg.set_msg_type(kind);
    msg.from = from;
    msg.to = 3;
    msg.term = term;
    msg
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Default::default()
    }
}

fn append(index: u64, log_term: u64, entries: &[(u64, u64)]) -> Message {
    let mut msg = message(MessageType::MsgAppend, LEADER, 5);
    msg.index = index;
    msg.log_term = log_term;
    msg.commit = 90;
    msg.entries = entries.iter().map(|&(i, t)| entry(i, t)).collect();
    msg
}

fn verdict(msg: &Message) -> Result<(), Invalid> {
    check(msg, local(), is_member)
}

#[test]
fn what_correct_peers_send_passes() {
    assert_eq!(verdict(&append(100, 4, &[(101, 4), (102, 5)])), Ok(()));
    let mut heartbeat = message(MessageType::MsgHeartbeat, LEADER, 5);
    heartbeat.commit = 100;
    assert_eq!(verdict(&heartbeat), Ok(()));
    let mut vote = message(MessageType::MsgRequestPreVote, MEMBER, 6);
    (vote.index, vote.log_term) = (100, 5);
    assert_eq!(verdict(&vote), Ok(()));
    let mut proposal = message(MessageType::MsgPropose, MEMBER, 0);
    proposal.entries = vec![entry(0, 0), entry(0, 0)].into();
    assert_eq!(verdict(&proposal), Ok(()));
    let mut ack = message(MessageType::MsgAppendResponse, MEMBER, 5);
    ack.index = 100;
    assert_eq!(verdict(&ack), Ok(()));
    for kind in [MessageType::MsgReadIndex, MessageType::MsgReadIndexResp] {
        let mut read = message(kind, MEMBER, 5);
        read.index = 90;
        read.entries = vec![entry(0, 0)].into();
        assert_eq!(verdict(&read), Ok(()), "{kind:?}");
    }
    assert_eq!(
        verdict(&message(MessageType::MsgTimeoutNow, LEADER, 5)),
        Ok(())
    );
}

#[test]
fn a_new_replica_accepts_its_group_s_term() {
    let fresh = LocalView {
        term: 0,
        last_index: 0,
        leader: 0,
        initialized: false,
    };
    let mut msg = append(0, 0, &[]);
    msg.term = 40_000;
    msg.commit = 0;
    assert_eq!(check(&msg, fresh, |_| false), Ok(()));
}

#[test]
fn terms_beyond_reach_are_refused() {
    let mut heartbeat = message(MessageType::MsgHeartbeat, LEADER, u64::MAX);
    heartbeat.commit = 1;
    assert!(matches!(verdict(&heartbeat), Err(Invalid::Term { .. })));
    heartbeat.term = 5 + MAX_TERM_STEP + 1;
    assert!(matches!(verdict(&heartbeat), Err(Invalid::Term { .. })));
    heartbeat.term = 5 + MAX_TERM_STEP;
    assert_eq!(verdict(&heartbeat), Ok(()));
    let high = LocalView {
        term: MAX_TERM,
        ..local()
    };
    heartbeat.term = MAX_TERM + 1;
    assert!(matches!(
        check(&heartbeat, high, is_member),
        Err(Invalid::Term { .. })
    ));
}

#[test]
fn indexes_beyond_reach_are_refused() {
    let mut msg = append(100, 4, &[]);
    msg.commit = u64::MAX;
    assert!(matches!(verdict(&msg), Err(Invalid::Index { .. })));
    let mut snapshot = message(MessageType::MsgSnapshot, LEADER, 5);
    snapshot.mut_snapshot().mut_metadata().index = MAX_INDEX + 1;
    assert!(matches!(verdict(&snapshot), Err(Invalid::Index { .. })));
}

#[test]
fn entries_must_follow_their_index() {
    for entries in [
        &[(100, 5)][..],
        &[(101, 5), (103, 5)],
        &[(101, 5), (101, 5)],
    ] {
        assert_eq!(
            verdict(&append(100, 4, entries)),
            Err(Invalid::Entries { index: 100 }),
            "{entries:?}"
        );
    }
    let mut proposal = message(MessageType::MsgPropose, MEMBER, 0);
    proposal.entries = vec![entry(0, 0), entry(7, 0)].into();
    assert!(matches!(verdict(&proposal), Err(Invalid::Entries { .. })));
}

#[test]
fn log_terms_must_not_exceed_the_message_s_term() {
    assert!(matches!(
        verdict(&append(100, 6, &[])),
        Err(Invalid::LogTerm { .. })
    ));
    assert!(matches!(
        verdict(&append(100, 4, &[(101, 1000)])),
        Err(Invalid::LogTerm { .. })
    ));
    assert!(matches!(
        verdict(&append(100, 4, &[(101, 5), (102, 4)])),
        Err(Invalid::Entries { .. })
    ));
    assert!(matches!(
        verdict(&append(100, 5, &[(101, 4)])),
        Err(Invalid::Entries { .. })
    ));
    let mut snapshot = message(MessageType::MsgSnapshot, LEADER, 5);
    snapshot.mut_snapshot().mut_metadata().term = 6;
    assert!(matches!(verdict(&snapshot), Err(Invalid::LogTerm { .. })));
}

#[test]
fn nothing_commits_or_is_acknowledged_past_the_local_log() {
    let mut heartbeat = message(MessageType::MsgHeartbeat, LEADER, 5);
    heartbeat.commit = 1023;
    assert_eq!(
        verdict(&heartbeat),
        Err(Invalid::CommitBeyondLog {
            commit: 1023,
            last: 100
        })
    );
    let mut ack = message(MessageType::MsgAppendResponse, MEMBER, 5);
    ack.index = 101;
    assert!(matches!(verdict(&ack), Err(Invalid::AckBeyondLog { .. })));
    ack.reject = true;
    assert_eq!(verdict(&ack), Ok(()));
}

#[test]
fn elections_and_proposals_come_from_members() {
    for kind in [
        MessageType::MsgRequestVote,
        MessageType::MsgRequestPreVote,
        MessageType::MsgPropose,
        MessageType::MsgReadIndex,
    ] {
        let msg = message(kind, STRANGER, 6);
        assert_eq!(verdict(&msg), Err(Invalid::NotAMember { kind }));
    }
    assert_eq!(
        verdict(&message(MessageType::MsgTimeoutNow, MEMBER, 5)),
        Err(Invalid::TimeoutNowNotFromLeader)
    );
    assert_eq!(
        verdict(&message(MessageType::MsgTimeoutNow, LEADER, 6)),
        Err(Invalid::TimeoutNowNotFromLeader)
    );
}

#[test]
fn refusals_are_counted_and_logged_at_most_once_a_second() {
    let mut refusals = Refusals::default();
    assert_eq!(refusals.note(5_000), Some(0));
    assert_eq!(refusals.note(5_001), None);
    assert_eq!(refusals.note(6_000), Some(1));
    assert_eq!(refusals.total, 3);
}
