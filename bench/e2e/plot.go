package main

import (
	"fmt"
	"image/color"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// barChart writes a PNG bar chart of one value per label.
func barChart(path, title, ylabel string, labels []string, values []float64) error {
	p := plot.New()
	p.Title.Text = title
	p.Y.Label.Text = ylabel
	vals := make(plotter.Values, len(values))
	copy(vals, values)
	bars, err := plotter.NewBarChart(vals, vg.Points(28))
	if err != nil {
		return err
	}
	bars.Color = color.RGBA{R: 60, G: 110, B: 180, A: 255}
	p.Add(bars)
	p.NominalX(labels...)
	return p.Save(vg.Length(float64(max(4, len(labels)))*0.9)*vg.Inch, 4*vg.Inch, path)
}

// linePoints writes a PNG of y against x, one labelled point per entry.
func linePoints(path, title, xlabel, ylabel string, labels []string, xs, ys []float64) error {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	pts := make(plotter.XYs, len(xs))
	for i := range xs {
		pts[i].X, pts[i].Y = xs[i], ys[i]
	}
	sc, err := plotter.NewScatter(pts)
	if err != nil {
		return err
	}
	p.Add(sc)
	lab, err := plotter.NewLabels(plotter.XYLabels{XYs: pts, Labels: labels})
	if err != nil {
		return err
	}
	p.Add(lab)
	p.Add(plotter.NewGrid())
	if err := p.Save(7*vg.Inch, 4.5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}
