"""The key layout of the ConfigDB, in one place.

Records live under `/heron/<kind>/<id>`. Unique names are kept as index keys written in the
same transaction as the record, so a name clash is caught by etcd, not by a read-then-write.
"""

ROOT = "/heron/"
NODES = ROOT + "nodes/"
NODE_SETTINGS = ROOT + "node-settings/"
WATCHDOGS = ROOT + "watchdogs/"  # a node's presence kept by its fence watchdog, under a lease
VMS = ROOT + "vms/"
VM_STATUS = ROOT + "vm-status/"
VM_NAMES = ROOT + "names/vm/"
POOLS = ROOT + "pools/"
VOLUMES = ROOT + "volumes/"
VOLUME_NAMES = ROOT + "names/volume/"
TASKS = ROOT + "tasks/"
USERS = ROOT + "users/"
TOKENS = ROOT + "tokens/"
# Roles granted on a scope (models/auth.py Grant), by grant id.
GRANTS = ROOT + "grants/"
# Failed logins per user name and per client address (models/auth.py LoginFailures), each
# under a lease; only administrators read them (and hear of them in the UI's event stream).
LOGIN_FAILURES = ROOT + "login-failures/"
MIGRATIONS = ROOT + "migrations/"
GROUPS = ROOT + "groups/"
ARDFS_MEMBERS = ROOT + "ardfs-members/"
VOLUME_HEALTH = ROOT + "volume-health/"
ARDFS_STATUS = ROOT + "ardfs-status/"
ARDFS_DELETED = ROOT + "ardfs-deleted/"
# Each ardfs pool's peer key (hex): read by the node agents only, never by an API route, and
# not under any prefix the UI's event stream follows.
ARDFS_SECRETS = ROOT + "ardfs-secrets/"
# iSCSI exports of ARDFS volumes (models/iscsi.py), by volume id; their CHAP secrets apart,
# read by the node agents only, never by an API route, and not followed by the event stream.
ISCSI_EXPORTS = ROOT + "iscsi-exports/"
ISCSI_SECRETS = ROOT + "iscsi-secrets/"
ETCD_JOINS = ROOT + "etcd-joins/"
SWITCHES = ROOT + "switches/"
NETWORKS = ROOT + "networks/"
NETWORK_STATUS = ROOT + "network-status/"
SECURITY_GROUPS = ROOT + "security-groups/"
# Monica: alerts (one record per rule and object), the administrator's rules (by name; a
# built-in rule's name replaces it), silences, and notification channels — whose secrets
# are never read by an API route, nor under a prefix the UI's event stream follows.
ALERTS = ROOT + "alerts/"
ALERT_RULES = ROOT + "alert-rules/"
SILENCES = ROOT + "silences/"
CHANNELS = ROOT + "channels/"
# Index keys, written in the VM's own transactions: a MAC is unique in the cluster, an
# address in its network, a VNI among the overlay segments.
MACS = ROOT + "names/mac/"
LEASES = ROOT + "leases/"
VNIS = ROOT + "names/vni/"
# A VM's snapshots, their names (unique per VM) and its current snapshot.
SNAPSHOTS = ROOT + "snapshots/"
SNAPSHOT_NAMES = ROOT + "names/snapshot/"
SNAPSHOT_HEADS = ROOT + "snapshot-heads/"
# What each node's VMs measured to use (models/demand.py), by node: for DRS and placement.
DEMAND = ROOT + "demand/"
LEADER = ROOT + "leader"
# The cluster CA's certificate and private key: read by the node agents only (each signs its
# own certificate), never by an API route nor under a prefix the UI's event stream follows.
CLUSTER_CA = ROOT + "pki/ca"
# One-time join tokens (models/cluster.py JoinToken) by the SHA-256 of the token, each under
# a lease that ends it; read by the API's join route only, beside the CA under pki/.
JOIN_TOKENS = ROOT + "pki/join-tokens/"
SETTINGS = ROOT + "settings/cluster"
# V2V: where VMs are imported from (models/imports.py), and each one's last scan.
# Disaster recovery: a VM's protection policy (the API's) and its rounds' status (the agent's).
DR_PROTECTIONS = ROOT + "dr/protections/"
DR_STATUS = ROOT + "dr/status/"
IMPORT_SOURCES = ROOT + "import-sources/"
IMPORT_SCANS = ROOT + "import-scans/"


def join_token(token_hash: str) -> str:
    return JOIN_TOKENS + token_hash


def node(name: str) -> str:
    return NODES + name


def demand(name: str) -> str:
    return DEMAND + name


def watchdog(name: str) -> str:
    return WATCHDOGS + name


def node_settings(name: str) -> str:
    return NODE_SETTINGS + name


def vm(vm_id: str) -> str:
    return VMS + vm_id


def vm_status(vm_id: str) -> str:
    return VM_STATUS + vm_id


def vm_name(name: str) -> str:
    return VM_NAMES + name


def pool(name: str) -> str:
    return POOLS + name


def volume(volume_id: str) -> str:
    return VOLUMES + volume_id


def volume_name(pool_name: str, name: str) -> str:
    return f"{VOLUME_NAMES}{pool_name}/{name}"


def task(task_id: str) -> str:
    return TASKS + task_id


def user(name: str) -> str:
    return USERS + name


def login_failures(record_id: str) -> str:
    return LOGIN_FAILURES + record_id


def grant(grant_id: str) -> str:
    return GRANTS + grant_id


def token(token_hash: str) -> str:
    return TOKENS + token_hash


def migration(vm_id: str) -> str:
    return MIGRATIONS + vm_id


def group(name: str) -> str:
    return GROUPS + name


def etcd_join(node_name: str) -> str:
    return ETCD_JOINS + node_name


def ardfs_member(pool: str, node: str) -> str:
    return f"{ARDFS_MEMBERS}{pool}/{node}"


def volume_health(volume_id: str) -> str:
    return VOLUME_HEALTH + volume_id


def ardfs_status(pool: str, node: str) -> str:
    return f"{ARDFS_STATUS}{pool}/{node}"


def ardfs_deleted(pool: str, volume_id: str) -> str:
    return f"{ARDFS_DELETED}{pool}/{volume_id}"


def ardfs_secret(pool: str) -> str:
    return ARDFS_SECRETS + pool


def iscsi_export(volume_id: str) -> str:
    return ISCSI_EXPORTS + volume_id


def iscsi_secret(volume_id: str) -> str:
    return ISCSI_SECRETS + volume_id


def switch(name: str) -> str:
    return SWITCHES + name


def network(name: str) -> str:
    return NETWORKS + name


def security_group(name: str) -> str:
    return SECURITY_GROUPS + name


def network_status(node_name: str) -> str:
    return NETWORK_STATUS + node_name


def mac(address: str) -> str:
    return MACS + address


def lease(network_name: str, address: str) -> str:
    return f"{LEASES}{network_name}/{address}"


def vni(number: int) -> str:
    return f"{VNIS}{number}"


def snapshots(vm_id: str) -> str:
    """The prefix of one VM's snapshots."""
    return f"{SNAPSHOTS}{vm_id}/"


def snapshot(vm_id: str, snapshot_id: str) -> str:
    return f"{SNAPSHOTS}{vm_id}/{snapshot_id}"


def snapshot_name(vm_id: str, name: str) -> str:
    return f"{SNAPSHOT_NAMES}{vm_id}/{name}"


def snapshot_head(vm_id: str) -> str:
    return SNAPSHOT_HEADS + vm_id


def alert(alert_id: str) -> str:
    return ALERTS + alert_id


def alert_rule(name: str) -> str:
    return ALERT_RULES + name


def silence(silence_id: str) -> str:
    return SILENCES + silence_id


def channel(name: str) -> str:
    return CHANNELS + name


def import_source(name: str) -> str:
    return IMPORT_SOURCES + name


def import_scan(source: str) -> str:
    return IMPORT_SCANS + source


def dr_protection(vm_id: str) -> str:
    return DR_PROTECTIONS + vm_id


def dr_status(vm_id: str) -> str:
    return DR_STATUS + vm_id
