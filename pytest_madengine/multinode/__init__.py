"""Multi-node runs: settings from ``multi_node_args`` (settings), this node's run and verdict
(node), the plugin-level rendezvous (rendezvous), per-rank results (ranks), and one pure
function per launcher (launchers/)."""
