//! Tansu's consumer group coordinator, with one defect of Tansu 0.6 mended.
//!
//! A member that leaves a group while the group is forming (between a join and the
//! leader's sync) is removed from the members, but stays the group's leader. Every other
//! member is then a follower of a member that no longer exists: its sync is answered
//! "rebalance in progress" and its next join makes it a follower again, for ever — the
//! group's partitions are never assigned, and as the state is stored, not even a broker
//! restart helps. A service whose consumer left cleanly (a restarted stream job, a
//! service stopped mid-rebalance) while its previous incarnation's session was still
//! open hit this in `crates/mlops/tests/faults.rs`: a feature view stopped being
//! computed until the test gave up.
//!
//! [`Groups`] delegates everything to Tansu's [`Controller`] and, before each join, looks
//! at the group as stored: a forming group whose leader is not among its members loses
//! that leader, so the joining member takes the role, as Tansu does when a leader misses
//! its heartbeats. The write is conditional on the stored version, so it never undoes a
//! concurrent change; the controller's cached copy is refused on its next write and
//! reloaded.

use async_trait::async_trait;
use tansu_broker::{
    Result,
    coordinator::group::{Coordinator, OffsetCommit, administrator::Controller},
};
use tansu_sans_io::{
    Body,
    join_group_request::JoinGroupRequestProtocol,
    leave_group_request::MemberIdentity,
    offset_fetch_request::{OffsetFetchRequestGroup, OffsetFetchRequestTopic},
    sync_group_request::SyncGroupRequestAssignment,
};
use tansu_storage::{GroupDetail, GroupState, Storage, StorageContainer, UpdateError, Version};

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

    /// Clears the leader of `group` if it is forming and its leader has left.
    async fn forget_departed_leader(&self, group: &str) {
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
        let (mut detail, version) = match self.storage.update_group(group, empty, Some(probe)).await
        {
            Err(UpdateError::Outdated { current, version }) => (*current, version),
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(group, error = ?e, "group not inspected");
                return;
            }
        };
        let GroupState::Forming { leader, .. } = &mut detail.state else {
            return;
        };
        let Some(departed) = leader.take_if(|l| !detail.members.contains_key(l.as_str())) else {
            return;
        };
        match self
            .storage
            .update_group(group, detail, Some(version))
            .await
        {
            Ok(_) => tracing::info!(
                group,
                leader = departed,
                "forming group's departed leader forgotten: the next member to join leads"
            ),
            // Changed meanwhile: looked at again on the next join.
            Err(e) => tracing::debug!(group, error = ?e, "departed leader not forgotten yet"),
        }
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
        self.forget_departed_leader(group_id).await;
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
    use bytes::Bytes;
    use tansu_sans_io::{ErrorCode, join_group_response::JoinGroupResponse};
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

    /// Joins as `member` ("" for a new member: then again with the id the group gave).
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
                    6_000,
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
        let a = join(&mut groups, "").await;
        assert_eq!(a.leader, a.member_id, "the first member leads");
        let assignment = [SyncGroupRequestAssignment::default()
            .member_id(a.member_id.clone())
            .assignment(Bytes::from_static(b"all partitions"))];
        groups
            .sync(
                GROUP,
                a.generation_id,
                &a.member_id,
                None,
                Some("consumer"),
                Some("range"),
                Some(&assignment),
            )
            .await
            .expect("sync");
        let b = join(&mut groups, "").await;
        groups
            .leave(GROUP, Some(&a.member_id), None)
            .await
            .expect("leave");
        let again = join(&mut groups, &b.member_id).await;
        (a.member_id, b.member_id, again.leader)
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
