// Package replay owns the determinism layer: the event types, the recorder
// that logs every non-deterministic input on the primary, the replayer that
// serves those inputs to the backup at the same exit numbers, and divergence
// detection.
//
// It knows nothing of sockets or processes.
package replay
