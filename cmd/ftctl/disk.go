package main

import (
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/ftvm/ftvm/storage"
	"github.com/spf13/cobra"
)

func newDiskCommand() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "disk",
		Short: "Create, list and inspect guest disk images in a storage directory",
		Long: `A disk is a raw image file in a storage directory, which the VM sees as a
virtio-blk device. For each disk NAME the directory holds NAME.img (the
image, sparse), NAME.json (size, creation time, device ID, fencing
generation) and, once opened, NAME.lock (the lock a running VMM holds).

The storage directory is --storage, else $FTVM_STORAGE, else
$XDG_DATA_HOME/ftvm/storage (usually ~/.local/share/ftvm/storage). For a
primary/backup pair on two hosts, use a shared filesystem mounted at the
same path on both.`,
	}
	cmd.PersistentFlags().StringVar(&dir, "storage", "", "storage directory (default $FTVM_STORAGE or ~/.local/share/ftvm/storage)")
	open := func() (*storage.Store, error) {
		d := dir
		if d == "" {
			var err error
			if d, err = storage.DefaultDir(); err != nil {
				return nil, err
			}
		}
		return storage.Open(d)
	}
	cmd.AddCommand(newDiskCreateCommand(open), newDiskInspectCommand(open), newDiskListCommand(open))
	return cmd
}

func newDiskCreateCommand(open func() (*storage.Store, error)) *cobra.Command {
	var size, mkfs, label string
	cmd := &cobra.Command{
		Use:   "create NAME --size SIZE",
		Short: "Create a sparse disk image, optionally with an ext4 filesystem",
		Long: `Create makes a new disk NAME of the given size. The image is sparse: it
takes no space on the host until the guest writes. It never replaces an
existing disk.

NAME is 1-128 letters, digits, '.', '_' or '-', starting with a letter or
digit. SIZE is a whole number with an optional unit in powers of 1024:
K, M, G, T (or KiB, MiB, GiB, TiB), e.g. 512M, 1G, 10GiB; it must be a
multiple of 4KiB. Decimal units (MB, GB) are refused as ambiguous.

--mkfs ext4 formats the image with the host's mkfs.ext4 (installing
e2fsprogs if it is missing); the guest can then mount it directly
(the filesystem label defaults to NAME, cut to 16 bytes).`,
		Example: `  ftctl disk create data --size 1G
  ftctl disk create kv --size 512M --mkfs ext4
  ftctl disk create scratch --size 10GiB --storage /mnt/shared/ftvm`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if size == "" {
				return errors.New("disk create: --size is required (e.g. --size 1G)")
			}
			n, err := storage.ParseSize(size)
			if err != nil {
				return fmt.Errorf("disk create: --size: %w", err)
			}
			var fs storage.Filesystem
			switch mkfs {
			case "", "none":
			case "ext4":
				fs = storage.FilesystemExt4
			default:
				return fmt.Errorf("disk create: --mkfs %q: supported filesystems: ext4", mkfs)
			}
			st, err := open()
			if err != nil {
				return err
			}
			m, err := st.CreateDisk(cmd.Context(), args[0], n, storage.CreateOptions{
				Filesystem: fs, Label: label, Progress: cmd.ErrOrStderr(),
			})
			if err != nil {
				return err
			}
			info, err := st.Inspect(m.Name)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "created disk %s in %s\n", m.Name, st.Dir())
			return printDiskInfo(out, info)
		},
	}
	cmd.Flags().StringVar(&size, "size", "", "disk size, e.g. 512M, 1G, 10GiB (required)")
	cmd.Flags().StringVar(&mkfs, "mkfs", "", "make a filesystem in the image: ext4 (default: none, a zeroed raw disk)")
	cmd.Flags().StringVar(&label, "label", "", "filesystem label with --mkfs (default: NAME, at most 16 bytes)")
	return cmd
}

func newDiskInspectCommand(open func() (*storage.Store, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect NAME",
		Short: "Show a disk's metadata, space used and whether a VMM holds it",
		Long: `Inspect prints a disk's metadata and checks that its image file matches it
(present, of the recorded size). "in use" shows the process holding the
disk's lock, if any.`,
		Example: "  ftctl disk inspect data",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open()
			if err != nil {
				return err
			}
			info, err := st.Inspect(args[0])
			if err != nil {
				return err
			}
			return printDiskInfo(cmd.OutOrStdout(), info)
		},
	}
}

func newDiskListCommand(open func() (*storage.Store, error)) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the disks in the storage directory",
		Long: `List prints one line per disk. A disk whose metadata or image is damaged is
reported on stderr and makes the command exit non-zero, after the healthy
disks are listed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open()
			if err != nil {
				return err
			}
			disks, listErr := st.ListDisks()
			var errs []error
			if listErr != nil {
				errs = append(errs, listErr)
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tSIZE\tALLOCATED\tFILESYSTEM\tID\tCREATED\tIN USE")
			for _, m := range disks {
				info, err := st.Inspect(m.Name)
				if err != nil {
					errs = append(errs, err)
					continue
				}
				inUse := "-"
				if info.InUse {
					inUse = info.Holder
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, storage.FormatSize(m.Size),
					humanBytes(info.Allocated), fsName(m.Filesystem), m.ID, m.Created.Local().Format(time.DateTime), inUse)
			}
			if err := w.Flush(); err != nil {
				return err
			}
			if len(disks) == 0 && len(errs) == 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "no disks in %s (create one with: ftctl disk create NAME --size 1G)\n", st.Dir())
			}
			return errors.Join(errs...)
		},
	}
}

func printDiskInfo(w io.Writer, info *storage.DiskInfo) error {
	inUse := "no"
	if info.InUse {
		inUse = "yes, by " + info.Holder
	}
	_, err := fmt.Fprintf(w, `name:        %s
image:       %s
size:        %s (%d bytes, %d sectors of 512)
allocated:   %s
filesystem:  %s
id:          %s
generation:  %d
created:     %s
in use:      %s
`, info.Name, info.ImagePath, storage.FormatSize(info.Size), info.Size, info.Size/512,
		humanBytes(info.Allocated), fsName(info.Filesystem), info.ID, info.Generation,
		info.Created.Local().Format(time.RFC3339), inUse)
	return err
}

func fsName(fs storage.Filesystem) string {
	if fs == storage.FilesystemNone {
		return "none"
	}
	return string(fs)
}

// humanBytes renders a byte count for reading (rounded, one decimal),
// unlike storage.FormatSize, which is exact.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 3 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f%s", v, []string{"KiB", "MiB", "GiB", "TiB"}[i])
}
