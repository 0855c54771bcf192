package replication

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// A primary tells its backup, in the log, how far its releases got: a
// "released" entry says every output of the log entries up to Seq has left
// the primary. A backup going live re-issues the disk writes it replayed
// after that point, which the primary may have held when it died (the
// guest was told they were done). Rewriting a block the primary did write
// writes the same bytes again, so too many is harmless; too few would
// lose acknowledged data. It sends the frames of that stretch again too:
// not for correctness (the guest's TCP would retransmit them) but for the
// pause, since the guest's retransmission timer, stretched by the acks the
// output rule delays, runs for up to seconds; a network may duplicate a
// frame anyway.

// releasedTag starts a released entry; a replay batch starts with its
// version byte (1) and the start header with '{', so the three never
// collide.
const releasedTag = 0xF0

const releasedSize = 1 + 8

// handoverEntry is the last entry of a planned switchover: the primary
// stopped its VM, every output of its log has left, and the backup is to
// go live where the log ends instead of stopping there.
var handoverEntry = []byte{0xF1}

func isHandover(entry []byte) bool { return len(entry) == 1 && entry[0] == handoverEntry[0] }

func encodeReleased(seq uint64) []byte {
	b := make([]byte, releasedSize)
	b[0] = releasedTag
	binary.BigEndian.PutUint64(b[1:], seq)
	return b
}

// isReleased says whether a log entry is a released entry (of any length:
// decodeReleased checks it).
func isReleased(entry []byte) bool { return len(entry) > 0 && entry[0] == releasedTag }

func decodeReleased(entry []byte) (uint64, error) {
	if len(entry) != releasedSize || entry[0] != releasedTag {
		return 0, fmt.Errorf("released entry of %d bytes, want %d starting with %#x", len(entry), releasedSize, releasedTag)
	}
	return binary.BigEndian.Uint64(entry[1:]), nil
}

// keptWrite is a disk write a backup replayed, tagged with the last log
// entry it had received when it did (never below the entry that logged it).
type keptWrite struct {
	seq  uint64
	disk int
	off  int64
	data []byte
}

// keptWrites are the disk writes and frames a backup replayed that the
// primary may not have released yet, oldest first. vCPU goroutine only.
type keptWrites struct {
	writes []keptWrite
	bytes  int
	frames []keptFrame
}

// keptFrame is a frame the guest sent during replay, tagged like a
// keptWrite.
type keptFrame struct {
	seq  uint64
	data []byte
}

// keepFrame keeps a copy of a frame the guest sent during replay.
func (k *keptWrites) keepFrame(seq uint64, frame []byte) {
	k.frames = append(k.frames, keptFrame{seq: seq, data: append([]byte(nil), frame...)})
}

// resend sends the kept frames, oldest first.
func (k *keptWrites) resend(send func(frame []byte)) int {
	for _, f := range k.frames {
		send(f.data)
	}
	return len(k.frames)
}

func (k *keptWrites) keep(seq uint64, disk int, off int64, p []byte) {
	k.writes = append(k.writes, keptWrite{seq: seq, disk: disk, off: off, data: append([]byte(nil), p...)})
	k.bytes += len(p)
}

// released drops the writes of entries up to seq: the primary released
// them.
func (k *keptWrites) released(seq uint64) {
	n := sort.Search(len(k.writes), func(i int) bool { return k.writes[i].seq > seq })
	for _, w := range k.writes[:n] {
		k.bytes -= len(w.data)
	}
	k.writes = append(k.writes[:0], k.writes[n:]...)
	n = sort.Search(len(k.frames), func(i int) bool { return k.frames[i].seq > seq })
	k.frames = append(k.frames[:0], k.frames[n:]...)
}

// rewrite writes disk's kept writes to d, in order, and flushes.
func (k *keptWrites) rewrite(disk int, d blockWriter) (int, error) {
	n := 0
	for _, w := range k.writes {
		if w.disk != disk {
			continue
		}
		if _, err := d.WriteAt(w.data, w.off); err != nil {
			return n, fmt.Errorf("re-issue a write of %d bytes at %d: %w", len(w.data), w.off, err)
		}
		n++
	}
	if n > 0 {
		if err := d.Flush(); err != nil {
			return n, fmt.Errorf("flush the re-issued writes: %w", err)
		}
	}
	return n, nil
}
