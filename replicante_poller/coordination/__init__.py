"""Several poller instances sharing the fleet (DESIGN section 9): the rendezvous assignment
(`rendezvous`) and the ZooKeeper coordinator (`zookeeper`, which imports kazoo: only
`backend = zookeeper` loads it)."""
