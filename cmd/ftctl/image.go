package main

import "github.com/spf13/cobra"

func newImageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build and inspect guest images (kernel, initramfs, manifest)",
	}
	return cmd
}
