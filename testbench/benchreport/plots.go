package main

import (
	"fmt"
	"image/color"
	"path/filepath"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// Plots writes speed.png, log.png and kicks.png for results into dir.
func Plots(results []Result, dir string) error {
	names := make([]string, len(results))
	speed := make(plotter.Values, len(results))
	inputs := make(plotter.Values, len(results))
	ckpts := make(plotter.Values, len(results))
	user := make(plotter.Values, len(results))
	kernel := make(plotter.Values, len(results))
	for i, r := range results {
		names[i] = r.Case
		speed[i] = r.Speed
		inputs[i], ckpts[i] = r.InputMbps, r.CheckpointMbps
		user[i], kernel[i] = float64(r.KicksUser), float64(r.KicksKernel)
	}
	blue := color.RGBA{R: 0x33, G: 0x66, B: 0xcc, A: 0xff}
	orange := color.RGBA{R: 0xe6, G: 0x80, B: 0x1a, A: 0xff}

	if err := bars(filepath.Join(dir, "speed.png"), "Guest alone time / pair time (1 = no slowdown)", "speed", names,
		[]series{{"speed", speed, blue}}); err != nil {
		return err
	}
	if err := bars(filepath.Join(dir, "log.png"), "Log bandwidth of the pair", "Mbit/s", names,
		[]series{{"inputs", inputs, blue}, {"checkpoints", ckpts, orange}}); err != nil {
		return err
	}
	return bars(filepath.Join(dir, "kicks.png"), "Watchdog kicks by the guest's mode", "kicks", names,
		[]series{{"user", user, blue}, {"kernel", kernel, orange}})
}

type series struct {
	label  string
	values plotter.Values
	color  color.Color
}

// bars draws one bar per case, the series stacked.
func bars(path, title, yLabel string, names []string, ss []series) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = yLabel
	p.Y.Min = 0
	var below *plotter.BarChart
	for _, s := range ss {
		bc, err := plotter.NewBarChart(s.values, vg.Points(36))
		if err != nil {
			return fmt.Errorf("plot %s: %w", path, err)
		}
		bc.Color = s.color
		bc.LineStyle.Width = 0
		if below != nil {
			bc.StackOn(below)
		}
		below = bc
		p.Add(bc)
		if len(ss) > 1 {
			p.Legend.Add(s.label, bc)
		}
	}
	p.Legend.Top = true
	p.NominalX(names...)
	if err := p.Save(5*vg.Inch, 3.5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}
