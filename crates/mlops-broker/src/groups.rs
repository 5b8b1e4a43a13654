//! Tansu's consumer group coordinator, with five defects of Tansu 0.6 mended. Each one
//! leaves a group formed, or forming, with partitions no member will ever read — and as
//! the state is stored, not even a broker restart helps.
//!
//! 1. A member that leaves a group while the group is forming (between a join and the
//!    leader's sync) is removed from the members, but stays the group's leader. Every
//!    other member is then a follower of a member that no longer exists: its sync is
//!    answered "rebalance in progress" and its next join makes it a follower again, for
//!    ever. A service whose consumer left cleanly (a restarted stream job, a service
//!    stopped mid-rebalance) while its previous incarnation's session was still open hit
//!    this in `crates/mlops/tests/faults.rs`: a feature view stopped being computed until
//!    the test gave up. Before each join, [`Groups`] looks at the group as stored: a
//!    forming group whose leader is not among its members loses that leader, so the
//!    joining member takes the role, as Tansu does when a leader misses its heartbeats.
//!    The write is conditional on the stored version, so it never undoes a concurrent
//!    change; the controller's cached copy is refused on its next write and reloaded.
//! 2. and 3. A sync that forms the group wrongly, when a member's session runs out in the
//!    middle of a rebalance: a follower's sync (no assignments) taken as a leaderless
//!    group's, or a leader's assignments naming a member gone since its join. Seen when the
//!    embedded broker stalled for longer than every session (the 100,000-event run of
//!    the same test): the labels job, a feature view and the training requests' consumer
//!    sat without partitions, and retraining never started. Before each sync, [`Groups`]
//!    answers such a sync "rebalance in progress", as Kafka's coordinator does
//!    ([`Groups::sync_must_wait`]).
//! 4. A heartbeat answered "no error" in a group forming without a leader: Tansu makes a
//!    formed group whose member expired such a group, and when the expiry was noticed on
//!    another request than the survivor's heartbeat, the survivor never joins again and
//!    the gone member's partitions stay unread (the monitor's registry updates, in the
//!    same run). [`Groups`] answers those heartbeats "rebalance in progress", as Kafka
//!    answers every heartbeat of a rebalancing group ([`Groups::rebalancing_unsaid`]).
//! 5. A formed group that keeps assigning a share to a member it dropped: when the
//!    expiry is noticed on a member's own heartbeat, Tansu removes the gone member and
//!    answers "rebalance in progress", but keeps the group formed, in its generation,
//!    with the gone member's assignment. The member's join again changes nothing, and its
//!    sync gives it its old share back: the rest is never read. A service restarted at
//!    once after a kill joins beside its dead predecessor, assigns it a share, and ends
//!    there when that session runs out (ARCHITECTURE.md, Tansu 5). Before each join,
//!    [`Groups`] makes such a group form again, in a new generation, led by the joining
//!    member (the same conditional write as 1.), and answers the other members'
//!    heartbeats "rebalance in progress", as Kafka does when a member expires.
//!
//! Everything else goes to Tansu's [`Controller`] unchanged.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use tansu_broker::{
    Result,
    coordinator::group::{Coordinator, OffsetCommit, administrator::Controller},
};
use tansu_sans_io::{
    Body, ErrorCode,
    heartbeat_response::HeartbeatResponse,
    join_group_request::JoinGroupRequestProtocol,
    leave_group_request::MemberIdentity,
    offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic},
    sync_group_request::SyncGroupRequestAssignment,
    sync_group_response::SyncGroupResponse,
};
use tansu_storage::{
    GroupDetail, GroupMember, GroupState, Storage, StorageContainer, UpdateError, Version,
};

/// How close to the end of its session a member counts as gone already when a sync is
/// looked at: Tansu reads the clock again a moment later.
const EXPIRY_MARGIN: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub(crate) struct Groups {
    controller: Controller<StorageContainer>,
    storage: StorageContainer,
}

impl Groups {
    pub(crate) fn new(storage: StorageContainer) -> Result<Self> {
        Ok(Self {
            controller: Controller::with_storage(storage.clone())?,
            storage,
        })
    }

    /// The stored detail of `group` and its version, or `None` when it has none yet or
    /// cannot be read.
    async fn stored(&self, group: &str) -> Option<(GroupDetail, Version)> {
        // Storage offers no plain read of a group: a write conditional on a version that
        // cannot match answers with the stored detail and its version instead.
        // Should the group have none yet, the probe's detail is stored: an empty forming
        // group, which is where Tansu starts a new group (the first join sets its protocol
        // and timeouts).
        let probe = Version::from(&uuid::Uuid::new_v4());
        let empty = GroupDetail {
            state: GroupState::Forming {
                protocol_type: None,
                protocol_name: None,
                leader: None,
            },
            ..GroupDetail::default()
        };
        match self.storage.update_group(group, empty, Some(probe)).await {
            Err(UpdateError::Outdated { current, version }) => Some((*current, version)),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(group, error = ?e, "group not inspected");
                None
            }
        }
    }

    /// Before a join, mends the two stored shapes no join can get out of on Tansu's
    /// coordinator: a forming group whose leader has left loses that leader (1.), and a
    /// formed group whose assignments name a member it no longer has forms again, in a
    /// new generation and without a leader (5.). Either way the joining member leads.
    async fn mend_before_join(&self, group: &str) {
        let Some((mut detail, version)) = self.stored(group).await else {
            return;
        };
        let mended = match &mut detail.state {
            GroupState::Forming { leader, .. } => {
                let Some(departed) = leader.take_if(|l| !detail.members.contains_key(l.as_str()))
                else {
                    return;
                };
                format!("forming group's departed leader {departed} forgotten")
            }
            GroupState::Formed {
                protocol_type,
                protocol_name,
                assignments,
                ..
            } => {
                let Some(gone) = assignments
                    .keys()
                    .find(|m| !detail.members.contains_key(m.as_str()))
                    .cloned()
                else {
                    return;
                };
                detail.state = GroupState::Forming {
                    protocol_type: Some(std::mem::take(protocol_type)),
                    protocol_name: Some(std::mem::take(protocol_name)),
                    leader: None,
                };
                detail.generation_id += 1;
                format!("formed group's assignment to the gone member {gone} withdrawn")
            }
        };
        match self
            .storage
            .update_group(group, detail, Some(version))
            .await
        {
            Ok(_) => tracing::info!(group, "{mended}: the joining member leads"),
            // Changed meanwhile: looked at again on the next join.
            Err(e) => tracing::debug!(group, error = ?e, "group not mended yet"),
        }
    }

    /// Why `member`'s sync must be answered "rebalance in progress" rather than given to
    /// Tansu, which would form `group` from it wrongly; `None` when Tansu may have it.
    ///
    /// Tansu forms a forming group from the sync of its leader — or of any member when it
    /// has no leader — with the assignments that sync carries, for whoever is a member by
    /// then. Two ways that goes wrong, both seen under a broker stall that outlasted
    /// every session (`crates/mlops/tests/faults.rs`, 100,000 events on Tansu):
    /// - a member's session runs out at the start of the sync (Tansu looks then), which
    ///   turns a formed group into a forming one *without a leader*, or takes a forming
    ///   group's leader away; a follower's sync, which carries no assignments, then forms
    ///   the group with none at all, and every member heartbeats happily without
    ///   partitions, for ever;
    /// - a member named in the leader's assignments is gone by the time of the sync (its
    ///   session ran out after the leader's join): its partitions go to no one, for ever.
    ///
    /// Kafka's coordinator answers both syncs "rebalance in progress", and so does this:
    /// the member joins again, and with the group as it now is, the next join leads.
    async fn sync_must_wait(
        &self,
        group: &str,
        member: &str,
        assignments: Option<&[SyncGroupRequestAssignment]>,
    ) -> Option<&'static str> {
        let (detail, _) = self.stored(group).await?;
        // A session Tansu sees as over when the sync reaches it, a moment after this look.
        let over = session_over(&detail, EXPIRY_MARGIN);
        let live = |id: &str| detail.members.get(id).is_some_and(|m| !over(m));
        if !live(member) {
            // Tansu answers "unknown member" itself, before anything else.
            return None;
        }
        let leader = match &detail.state {
            GroupState::Forming { leader, .. } => leader.as_deref().filter(|l| live(l)),
            // A formed group that stays formed answers a sync with the member's stored
            // assignment; one whose member's session is over forms again, leaderless.
            GroupState::Formed { .. } if !detail.members.values().any(&over) => return None,
            GroupState::Formed { .. } => None,
        };
        if leader != Some(member) {
            return Some("the group is forming and this member does not lead it");
        }
        if assignments
            .into_iter()
            .flatten()
            .any(|assigned| !live(&assigned.member_id))
        {
            return Some("the leader's assignments name a member that is gone");
        }
        None
    }

    /// Whether `group` is rebalancing while Tansu would not say so — forming with no one
    /// to lead it, as stored or once Tansu sees a session that is over, or formed with a
    /// share assigned to a member it no longer has — then a heartbeat is answered
    /// "rebalance in progress".
    ///
    /// Tansu turns a formed group whose member's session ran out into a forming one
    /// without a leader, and keeps its generation; when the expiry is noticed on another
    /// request than the survivor's heartbeat (its offset commit, a stranger's heartbeat),
    /// the survivor's heartbeats are answered with no error from then on. It never joins
    /// again and keeps reading only its old share of the partitions; the gone member's
    /// share stays unread, for good. A member joining beside a dead one (ARCHITECTURE.md,
    /// Tansu 5) and a member's own stale id left by a broker stall can end there. Kafka
    /// asks every member of a rebalancing group to join again, and so does this.
    async fn rebalancing_unsaid(&self, group: &str) -> bool {
        let Some((detail, _)) = self.stored(group).await else {
            return false;
        };
        let over = session_over(&detail, Duration::ZERO);
        match &detail.state {
            GroupState::Forming { leader, .. } => leader
                .as_deref()
                .and_then(|l| detail.members.get(l))
                .is_none_or(over),
            // Tansu's own heartbeat notices an expiry in a formed group and asks for a
            // rejoin itself, but only the member whose heartbeat noticed it: the others of
            // a group still assigning the gone member a share join again too (5.).
            GroupState::Formed { assignments, .. } => assignments
                .keys()
                .any(|m| !detail.members.contains_key(m.as_str())),
        }
    }
}

/// Whether a member of `detail` has gone without contact for longer than the group's
/// session, less `margin` — Tansu's test of a missed heartbeat, read from now.
fn session_over(detail: &GroupDetail, margin: Duration) -> impl Fn(&GroupMember) -> bool {
    let now = SystemTime::now();
    let session = Duration::from_millis(u64::try_from(detail.session_timeout_ms).unwrap_or(0));
    move |member| {
        member.last_contact.is_none_or(|contact| {
            now.duration_since(contact).unwrap_or_default() + margin > session
        })
    }
}

#[async_trait]
impl Coordinator for Groups {
    async fn join(
        &mut self,
        client_id: Option<&str>,
        group_id: &str,
        session_timeout_ms: i32,
        rebalance_timeout_ms: Option<i32>,
        member_id: &str,
        group_instance_id: Option<&str>,
        protocol_type: &str,
        protocols: Option<&[JoinGroupRequestProtocol]>,
        reason: Option<&str>,
    ) -> Result<Body> {
        self.mend_before_join(group_id).await;
        self.controller
            .join(
                client_id,
                group_id,
                session_timeout_ms,
                rebalance_timeout_ms,
                member_id,
                group_instance_id,
                protocol_type,
                protocols,
                reason,
            )
            .await
    }

    async fn sync(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
        protocol_type: Option<&str>,
        protocol_name: Option<&str>,
        assignments: Option<&[SyncGroupRequestAssignment]>,
    ) -> Result<Body> {
        if let Some(reason) = self.sync_must_wait(group_id, member_id, assignments).await {
            tracing::info!(
                group = group_id,
                member = member_id,
                reason,
                "sync answered \"rebalance in progress\": the member joins again"
            );
            return Ok(SyncGroupResponse::default()
                .throttle_time_ms(Some(0))
                .error_code(ErrorCode::RebalanceInProgress.into())
                .protocol_type(protocol_type.map(str::to_owned))
                .protocol_name(protocol_name.map(str::to_owned))
                .assignment(Bytes::new())
                .into());
        }
        self.controller
            .sync(
                group_id,
                generation_id,
                member_id,
                group_instance_id,
                protocol_type,
                protocol_name,
                assignments,
            )
            .await
    }

    async fn heartbeat(
        &mut self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        group_instance_id: Option<&str>,
    ) -> Result<Body> {
        if self.rebalancing_unsaid(group_id).await {
            tracing::info!(
                group = group_id,
                member = member_id,
                "heartbeat in a group that must form again: rebalance in progress"
            );
            return Ok(HeartbeatResponse::default()
                .throttle_time_ms(Some(0))
                .error_code(ErrorCode::RebalanceInProgress.into())
                .into());
        }
        self.controller
            .heartbeat(group_id, generation_id, member_id, group_instance_id)
            .await
    }

    async fn leave(
        &mut self,
        group_id: &str,
        member_id: Option<&str>,
        members: Option<&[MemberIdentity]>,
    ) -> Result<Body> {
        self.controller.leave(group_id, member_id, members).await
    }

    async fn offset_commit(&mut self, detail: OffsetCommit<'_>) -> Result<Body> {
        self.controller.offset_commit(detail).await
    }

    async fn offset_fetch(
        &mut self,
        group_id: Option<&str>,
        topics: Option<&[OffsetFetchRequestTopic]>,
        groups: Option<&[OffsetFetchRequestGroup]>,
        require_stable: Option<bool>,
    ) -> Result<Body> {
        self.controller
            .offset_fetch(group_id, topics, groups, require_stable)
            .await
    }
}

#[cfg(test)]
mod tests {
    use tansu_sans_io::join_group_response::JoinGroupResponse;
    use url::Url;

    use super::*;

    const GROUP: &str = "stream-job";

    /// A coordinator on a fresh SQLite file, the engine the platform runs on.
    async fn storage(dir: &std::path::Path) -> StorageContainer {
        let url = format!("sqlite:///{}", dir.join("broker.db").display());
        let storage = StorageContainer::builder()
            .cluster_id("test")
            .node_id(1)
            .advertised_listener(Url::parse("tcp://127.0.0.1:9092").unwrap())
            .storage(Url::parse(&url).unwrap())
            .silent(true)
            .build()
            .await
            .expect("storage");
        // What a broker does as it starts: groups are stored under its cluster.
        storage
            .register_broker(tansu_storage::BrokerRegistrationRequest {
                broker_id: 1,
                cluster_id: "test".to_owned(),
                incarnation_id: uuid::Uuid::now_v7(),
                rack: None,
            })
            .await
            .expect("register");
        storage
    }

    /// Joins as `member` ("" for a new member: then again with the id the group gave), with
    /// a session longer than Tansu's pauses of a follower's join (3 s each) add up to.
    async fn join(groups: &mut impl Coordinator, member: &str) -> JoinGroupResponse {
        let protocols = [JoinGroupRequestProtocol::default()
            .name("range".into())
            .metadata(Bytes::from_static(b"subscription"))];
        let mut member = member.to_owned();
        loop {
            let body = groups
                .join(
                    Some("client"),
                    GROUP,
                    30_000,
                    Some(300_000),
                    &member,
                    None,
                    "consumer",
                    Some(&protocols),
                    None,
                )
                .await
                .expect("join");
            let Body::JoinGroupResponse(response) = body else {
                panic!("not a join response: {body:?}");
            };
            if response.error_code != i16::from(ErrorCode::MemberIdRequired) {
                assert_eq!(
                    response.error_code,
                    i16::from(ErrorCode::None),
                    "{member}: {response:?}"
                );
                return response;
            }
            member = response.member_id;
        }
    }

    /// Member A leads the group and syncs; B joins (the group is forming again); A leaves
    /// before it rejoined; B joins again. Returns A's and B's ids and the leader B's last
    /// join named.
    async fn leader_leaves_while_forming(mut groups: impl Coordinator) -> (String, String, String) {
        let a = lead_alone(&mut groups).await;
        assert_eq!(a.leader, a.member_id, "the first member leads");
        let b = join(&mut groups, "").await;
        groups
            .leave(GROUP, Some(&a.member_id), None)
            .await
            .expect("leave");
        let again = join(&mut groups, &b.member_id).await;
        (a.member_id, b.member_id, again.leader)
    }

    /// Syncs `member` at the generation of its join with `assignments` (none: a
    /// follower's sync).
    async fn sync(
        groups: &mut impl Coordinator,
        member: &JoinGroupResponse,
        assignments: &[SyncGroupRequestAssignment],
    ) -> SyncGroupResponse {
        let body = groups
            .sync(
                GROUP,
                member.generation_id,
                &member.member_id,
                None,
                Some("consumer"),
                Some("range"),
                Some(assignments),
            )
            .await
            .expect("sync");
        let Body::SyncGroupResponse(response) = body else {
            panic!("not a sync response: {body:?}");
        };
        response
    }

    /// `member`'s last heartbeat, as stored, an hour ago: its session is over.
    async fn silence(storage: &StorageContainer, member: &str) {
        let probe = Version::from(&uuid::Uuid::new_v4());
        let stored = storage
            .update_group(GROUP, GroupDetail::default(), Some(probe))
            .await;
        let Err(UpdateError::Outdated { current, version }) = stored else {
            panic!("no group stored: {stored:?}");
        };
        let mut detail = *current;
        detail
            .members
            .get_mut(member)
            .expect("a member")
            .last_contact = Some(SystemTime::now() - Duration::from_secs(3600));
        storage
            .update_group(GROUP, detail, Some(version))
            .await
            .expect("silenced");
    }

    /// Every partition, to `member`.
    fn all_to(member: &str) -> [SyncGroupRequestAssignment; 1] {
        [SyncGroupRequestAssignment::default()
            .member_id(member.to_owned())
            .assignment(Bytes::from_static(b"all partitions"))]
    }

    /// Partition 0 to `a`, partition 1 to `b`.
    fn halves(a: &str, b: &str) -> [SyncGroupRequestAssignment; 2] {
        [
            SyncGroupRequestAssignment::default()
                .member_id(a.to_owned())
                .assignment(Bytes::from_static(b"partition 0")),
            SyncGroupRequestAssignment::default()
                .member_id(b.to_owned())
                .assignment(Bytes::from_static(b"partition 1")),
        ]
    }

    /// A new member joins, leads, and syncs every partition to itself.
    async fn lead_alone(groups: &mut impl Coordinator) -> JoinGroupResponse {
        let a = join(groups, "").await;
        sync(groups, &a, &all_to(&a.member_id)).await;
        a
    }

    /// `member`, told to join again, leads a group of one and is given every partition.
    async fn rejoins_and_leads_alone(groups: &mut impl Coordinator, member: &str) {
        let again = join(groups, member).await;
        assert_eq!(
            again.leader, member,
            "{member} leads the group it is left in"
        );
        assert_eq!(again.members.as_ref().map(Vec::len), Some(1), "{again:?}");
        let answer = sync(groups, &again, &all_to(member)).await;
        assert_eq!(answer.error_code, i16::from(ErrorCode::None), "{answer:?}");
        assert_eq!(&answer.assignment[..], b"all partitions");
    }

    /// A leads and syncs; B joins (the group forms again, A its leader still); A falls
    /// silent before it rejoined, and its session runs out; B syncs as the follower it was
    /// told it is. Returns B's join and what its sync was answered.
    async fn follower_syncs_after_its_leader_fell_silent(
        groups: &mut impl Coordinator,
        storage: &StorageContainer,
    ) -> (JoinGroupResponse, SyncGroupResponse) {
        let a = lead_alone(groups).await;
        let b = join(groups, "").await;
        assert_eq!(b.leader, a.member_id, "B follows A");
        silence(storage, &a.member_id).await;
        let answer = sync(groups, &b, &[]).await;
        (b, answer)
    }

    #[tokio::test]
    async fn a_follower_sync_does_not_form_a_group_whose_leader_is_gone() {
        // Tansu's own coordinator takes B's empty sync as the leader's: the group forms
        // with no partition assigned to anyone, and stays so.
        let dir = tempfile::tempdir().unwrap();
        let stored = storage(dir.path()).await;
        let mut controller = Controller::with_storage(stored.clone()).unwrap();
        let (_, answer) =
            follower_syncs_after_its_leader_fell_silent(&mut controller, &stored).await;
        assert_eq!(answer.error_code, i16::from(ErrorCode::None), "{answer:?}");
        assert!(answer.assignment.is_empty(), "{answer:?}");
        let (detail, _) = Groups::new(stored).unwrap().stored(GROUP).await.unwrap();
        assert!(
            matches!(&detail.state, GroupState::Formed { assignments, .. } if assignments.is_empty()),
            "the defect this module mends is not reproduced: {:?}",
            detail.state
        );

        // Mended: B is told to join again, leads, and its own assignment forms the group.
        let dir = tempfile::tempdir().unwrap();
        let stored = storage(dir.path()).await;
        let mut groups = Groups::new(stored.clone()).unwrap();
        let (b, answer) = follower_syncs_after_its_leader_fell_silent(&mut groups, &stored).await;
        assert_eq!(
            answer.error_code,
            i16::from(ErrorCode::RebalanceInProgress),
            "{answer:?}"
        );
        rejoins_and_leads_alone(&mut groups, &b.member_id).await;
    }

    /// A leads and syncs; B joins (the group forms again); A joins again and, leading,
    /// is given both members; B's session runs out; A syncs a partition to each. Returns
    /// A's last join and what its sync was answered.
    async fn leader_assigns_to_a_member_gone_since_its_join(
        groups: &mut impl Coordinator,
        storage: &StorageContainer,
    ) -> (JoinGroupResponse, SyncGroupResponse) {
        let a = lead_alone(groups).await;
        let b = join(groups, "").await;
        let a = join(groups, &a.member_id).await;
        assert_eq!(a.leader, a.member_id, "A leads");
        assert_eq!(a.members.as_ref().map(Vec::len), Some(2), "{a:?}");
        silence(storage, &b.member_id).await;
        let halves = halves(&a.member_id, &b.member_id);
        let answer = sync(groups, &a, &halves).await;
        (a, answer)
    }

    #[tokio::test]
    async fn a_leader_assignment_to_a_member_gone_since_is_made_again() {
        // Tansu's own coordinator forms the group with partition 1 assigned to B, who is no
        // member any more: no one will ever read it.
        let dir = tempfile::tempdir().unwrap();
        let stored = storage(dir.path()).await;
        let mut controller = Controller::with_storage(stored.clone()).unwrap();
        let (_, answer) =
            leader_assigns_to_a_member_gone_since_its_join(&mut controller, &stored).await;
        assert_eq!(answer.error_code, i16::from(ErrorCode::None), "{answer:?}");
        let (detail, _) = Groups::new(stored).unwrap().stored(GROUP).await.unwrap();
        let GroupState::Formed { assignments, .. } = &detail.state else {
            panic!("not formed: {:?}", detail.state);
        };
        assert!(
            assignments.keys().any(|m| !detail.members.contains_key(m)),
            "the defect this module mends is not reproduced: {detail:?}"
        );

        // Mended: A is told to join again, and assigns everything to the members left.
        let dir = tempfile::tempdir().unwrap();
        let stored = storage(dir.path()).await;
        let mut groups = Groups::new(stored.clone()).unwrap();
        let (a, answer) =
            leader_assigns_to_a_member_gone_since_its_join(&mut groups, &stored).await;
        assert_eq!(
            answer.error_code,
            i16::from(ErrorCode::RebalanceInProgress),
            "{answer:?}"
        );
        rejoins_and_leads_alone(&mut groups, &a.member_id).await;
    }

    /// `member`'s heartbeat at the generation of its join.
    async fn heartbeat(groups: &mut impl Coordinator, member: &str, generation: i32) -> i16 {
        let body = groups
            .heartbeat(GROUP, generation, member, None)
            .await
            .expect("heartbeat");
        let Body::HeartbeatResponse(response) = body else {
            panic!("not a heartbeat response: {body:?}");
        };
        response.error_code
    }

    /// A leads, B joins, A joins again and syncs a partition to each: returns their joins.
    async fn share_in_halves(
        groups: &mut impl Coordinator,
    ) -> (JoinGroupResponse, JoinGroupResponse) {
        let a = lead_alone(groups).await;
        let b = join(groups, "").await;
        let a = join(groups, &a.member_id).await;
        let halves = halves(&a.member_id, &b.member_id);
        assert_eq!(
            &sync(groups, &a, &halves).await.assignment[..],
            b"partition 0"
        );
        assert_eq!(&sync(groups, &b, &[]).await.assignment[..], b"partition 1");
        (a, b)
    }

    /// A and B share the group's partitions; B's session runs out, and the expiry is
    /// noticed on a request other than A's heartbeat (here a stranger's heartbeat).
    /// Returns A's join and what A's next heartbeat was answered.
    async fn survivor_heartbeats_after_the_other_member_expired(
        groups: &mut impl Coordinator,
        storage: &StorageContainer,
    ) -> (JoinGroupResponse, i16) {
        let (a, b) = share_in_halves(groups).await;
        silence(storage, &b.member_id).await;
        let stranger = heartbeat(groups, "stranger", a.generation_id).await;
        assert_eq!(stranger, i16::from(ErrorCode::UnknownMemberId));
        let answer = heartbeat(groups, &a.member_id, a.generation_id).await;
        (a, answer)
    }

    #[tokio::test]
    async fn a_survivor_of_an_expired_member_is_asked_to_join_again() {
        // Tansu's own coordinator: the group is forming without a leader, and A's
        // heartbeats are answered with no error — partition 1 is never read again.
        let dir = tempfile::tempdir().unwrap();
        let stored = storage(dir.path()).await;
        let mut controller = Controller::with_storage(stored.clone()).unwrap();
        let (_, answer) =
            survivor_heartbeats_after_the_other_member_expired(&mut controller, &stored).await;
        assert_eq!(answer, i16::from(ErrorCode::None));
        let (detail, _) = Groups::new(stored).unwrap().stored(GROUP).await.unwrap();
        assert!(
            matches!(&detail.state, GroupState::Forming { leader: None, .. }),
            "the defect this module mends is not reproduced: {:?}",
            detail.state
        );

        // Mended: A is told to join again, leads, and takes every partition.
        let dir = tempfile::tempdir().unwrap();
        let stored = storage(dir.path()).await;
        let mut groups = Groups::new(stored.clone()).unwrap();
        let (a, answer) =
            survivor_heartbeats_after_the_other_member_expired(&mut groups, &stored).await;
        assert_eq!(answer, i16::from(ErrorCode::RebalanceInProgress));
        rejoins_and_leads_alone(&mut groups, &a.member_id).await;
    }

    /// A and B share the group's partitions; B's session runs out, and A's own heartbeat
    /// notices: it is answered "rebalance in progress", and A joins again and, leading,
    /// syncs every partition to itself. Returns A's first join, its join again and what
    /// its sync was answered.
    async fn survivor_joins_again_after_its_heartbeat_noticed_an_expiry(
        groups: &mut impl Coordinator,
        storage: &StorageContainer,
    ) -> (JoinGroupResponse, JoinGroupResponse, SyncGroupResponse) {
        let (a, b) = share_in_halves(groups).await;
        silence(storage, &b.member_id).await;
        assert_eq!(
            heartbeat(groups, &a.member_id, a.generation_id).await,
            i16::from(ErrorCode::RebalanceInProgress)
        );
        let again = join(groups, &a.member_id).await;
        assert_eq!(again.leader, a.member_id, "A leads the group it is left in");
        assert_eq!(again.members.as_ref().map(Vec::len), Some(1), "{again:?}");
        let answer = sync(groups, &again, &all_to(&a.member_id)).await;
        (a, again, answer)
    }

    #[tokio::test]
    async fn a_formed_group_whose_assignment_names_a_gone_member_forms_again() {
        // Tansu's own coordinator: the heartbeat drops B but keeps the group formed, with
        // partition 1 assigned to B; A's join again changes nothing (same generation) and
        // its sync is answered with its old share. Partition 1 is never read again.
        let dir = tempfile::tempdir().unwrap();
        let stored = storage(dir.path()).await;
        let mut controller = Controller::with_storage(stored.clone()).unwrap();
        let (a, again, answer) =
            survivor_joins_again_after_its_heartbeat_noticed_an_expiry(&mut controller, &stored)
                .await;
        assert_eq!(again.generation_id, a.generation_id);
        assert_eq!(answer.error_code, i16::from(ErrorCode::None), "{answer:?}");
        assert_eq!(
            &answer.assignment[..],
            b"partition 0",
            "the defect this module mends is not reproduced"
        );
        let (detail, _) = Groups::new(stored).unwrap().stored(GROUP).await.unwrap();
        assert!(
            matches!(&detail.state, GroupState::Formed { assignments, .. }
                if assignments.keys().any(|m| !detail.members.contains_key(m))),
            "the defect this module mends is not reproduced: {detail:?}"
        );

        // Mended: A's join again starts a new generation, and its assignment forms it.
        let dir = tempfile::tempdir().unwrap();
        let stored = storage(dir.path()).await;
        let mut groups = Groups::new(stored.clone()).unwrap();
        let (a, again, answer) =
            survivor_joins_again_after_its_heartbeat_noticed_an_expiry(&mut groups, &stored).await;
        assert!(again.generation_id > a.generation_id, "{again:?}");
        assert_eq!(answer.error_code, i16::from(ErrorCode::None), "{answer:?}");
        assert_eq!(&answer.assignment[..], b"all partitions");
    }

    /// A, B and C share the group's partitions; C's session runs out and A's heartbeat
    /// notices. Returns what B's next heartbeat was answered.
    async fn other_survivor_heartbeats_after_an_expiry_its_peer_noticed(
        groups: &mut impl Coordinator,
        storage: &StorageContainer,
    ) -> i16 {
        let a = lead_alone(groups).await;
        let b = join(groups, "").await;
        let c = join(groups, "").await;
        let a = join(groups, &a.member_id).await;
        let b = join(groups, &b.member_id).await;
        let c = join(groups, &c.member_id).await;
        assert_eq!(a.leader, a.member_id, "A leads");
        assert_eq!(a.members.as_ref().map(Vec::len), Some(3), "{a:?}");
        let thirds: Vec<_> = [&a, &b, &c]
            .iter()
            .map(|m| {
                SyncGroupRequestAssignment::default()
                    .member_id(m.member_id.clone())
                    .assignment(Bytes::from(m.member_id.clone()))
            })
            .collect();
        for (member, assignments) in [(&a, &thirds[..]), (&b, &[]), (&c, &[])] {
            let answer = sync(groups, member, assignments).await;
            assert_eq!(&answer.assignment[..], member.member_id.as_bytes());
        }
        silence(storage, &c.member_id).await;
        assert_eq!(
            heartbeat(groups, &a.member_id, a.generation_id).await,
            i16::from(ErrorCode::RebalanceInProgress)
        );
        heartbeat(groups, &b.member_id, b.generation_id).await
    }

    #[tokio::test]
    async fn every_survivor_of_an_expiry_is_asked_to_join_again() {
        // Tansu's own coordinator asks only A, whose heartbeat noticed.
        let dir = tempfile::tempdir().unwrap();
        let stored = storage(dir.path()).await;
        let mut controller = Controller::with_storage(stored.clone()).unwrap();
        let answer =
            other_survivor_heartbeats_after_an_expiry_its_peer_noticed(&mut controller, &stored)
                .await;
        assert_eq!(
            answer,
            i16::from(ErrorCode::None),
            "the defect this module mends is not reproduced"
        );

        let dir = tempfile::tempdir().unwrap();
        let stored = storage(dir.path()).await;
        let mut groups = Groups::new(stored.clone()).unwrap();
        let answer =
            other_survivor_heartbeats_after_an_expiry_its_peer_noticed(&mut groups, &stored).await;
        assert_eq!(answer, i16::from(ErrorCode::RebalanceInProgress));
    }

    #[tokio::test]
    async fn a_forming_group_whose_leader_left_is_led_by_the_next_member_to_join() {
        // Tansu's own coordinator: B follows A, who is gone, and no one can ever sync.
        let dir = tempfile::tempdir().unwrap();
        let controller = Controller::with_storage(storage(dir.path()).await).unwrap();
        let (a, _, leader) = leader_leaves_while_forming(controller).await;
        assert_eq!(leader, a, "the defect this module mends is not reproduced");

        let dir = tempfile::tempdir().unwrap();
        let groups = Groups::new(storage(dir.path()).await).unwrap();
        let (_, b, leader) = leader_leaves_while_forming(groups).await;
        assert_eq!(leader, b, "the member left in the group leads it");
    }
}
