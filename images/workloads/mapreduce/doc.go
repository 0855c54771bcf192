// Package mapreduce runs MapReduce jobs as Dean and Ghemawat's paper
// ("MapReduce: Simplified Data Processing on Large Clusters", 2004)
// describes them, on machines that share no file system: a coordinator
// (the paper's master) and workers, talking over TCP.
//
//   - Coordinator (coordinator.go, Section 3.1 steps 1-3 and 3.2): one
//     map task per input split, one reduce task per partition; reduce
//     tasks are handed out once every map task is done. Its RPCs are
//     net/rpc over TCP. Splits travel inside the map task, so a worker
//     needs nothing but the coordinator's address.
//   - Map (worker.go doMap, step 4): a worker partitions Map's output by
//     hash(key) mod R into R intermediate files on its own disk, each
//     written atomically, and serves them over HTTP.
//   - Reduce (doReduce, steps 5-6): a worker fetches its partition from
//     every map task's worker, sorts by key, reduces, and sends the output
//     to the coordinator, which writes it with an atomic rename; the job is
//     done when every reduce output exists (Coordinator.Done).
//   - Fault tolerance (Section 3.3): a task not reported done within
//     TaskTimeout goes to another worker (covers dead, hung and slow
//     workers; the first completion counts, later ones are ignored); a
//     reducer that cannot fetch a map output reports it, and that map
//     task runs again, since its output died with its worker's disk.
//   - Applications: WordCount and InvertedIndex; Sequential is the
//     single-process reference a distributed run must equal.
//
// WorkerConfig.Fault injects crashes, hangs and slowness per task, for
// tests and demos.
package mapreduce
