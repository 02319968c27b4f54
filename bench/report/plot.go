package report

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// palette colours the policies in plots, in result order.
var palette = []color.RGBA{
	{0x1f, 0x77, 0xb4, 0xff}, {0xd6, 0x27, 0x28, 0xff}, {0x2c, 0xa0, 0x2c, 0xff},
	{0xff, 0x7f, 0x0e, 0xff}, {0x94, 0x67, 0xbd, 0xff}, {0x8c, 0x56, 0x4b, 0xff},
	{0xe3, 0x77, 0xc2, 0xff}, {0x7f, 0x7f, 0x7f, 0xff}, {0xbc, 0xbd, 0x22, 0xff},
}

// canvas is a white RGBA image with a plot area inset by margin pixels.
type canvas struct {
	img    *image.RGBA
	margin int
}

func newCanvas(w, h int) *canvas {
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	for i := range img.Pix {
		img.Pix[i] = 0xff
	}
	c := &canvas{img: img, margin: 60}
	grey := color.RGBA{0xcc, 0xcc, 0xcc, 0xff}
	for k := 0; k <= 4; k++ {
		y := c.margin + k*(h-2*c.margin)/4
		c.line(c.margin, y, w-c.margin, y, grey)
		x := c.margin + k*(w-2*c.margin)/4
		c.line(x, c.margin, x, h-c.margin, grey)
	}
	return c
}

// text writes s with its baseline's left end at pixel (x, y), in the 7x13 bitmap font.
func (c *canvas) text(x, y int, s string, col color.RGBA) {
	d := font.Drawer{Dst: c.img, Src: image.NewUniform(col), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// axes labels the plot: a title above it, the x and y axis names, and tick labels at
// the five grid lines (fractions 0, .25, .5, .75, 1 of xmax and ymax, printed by xf and
// yf).
func (c *canvas) axes(title, xname, yname string, xmax, ymax float64, xf, yf func(float64) string) {
	black := color.RGBA{0, 0, 0, 0xff}
	b := c.img.Bounds()
	c.text(c.margin, c.margin-25, title, black)
	c.text(c.margin, c.margin-8, yname, black)
	c.text(b.Dx()-c.margin-7*len(xname), b.Dy()-8, xname, black)
	for k := 0; k <= 4; k++ {
		f := float64(k) / 4
		if xf != nil {
			x, y := c.xy(f, 0)
			l := xf(f * xmax)
			c.text(x-7*len(l)/2, y+15, l, black)
		}
		if yf != nil {
			x, y := c.xy(0, f)
			l := yf(f * ymax)
			c.text(x-7*len(l)-4, y+4, l, black)
		}
	}
}

// legend lists names in their colours down the plot's top-left corner.
func (c *canvas) legend(names []string, cols []color.RGBA) {
	for i, n := range names {
		x, y := c.margin+8, c.margin+16+15*i
		c.rect(x, y-9, x+10, y+1, cols[i])
		c.text(x+15, y, n, color.RGBA{0, 0, 0, 0xff})
	}
}

func pct1(v float64) string { return fmt.Sprintf("%.1f%%", 100*v) }
func secs(v float64) string { return fmt.Sprintf("%.3gs", v) }
func pct(v float64) string  { return fmt.Sprintf("%.0f%%", 100*v) }

// xy maps fractions (0..1, y up) to pixels.
func (c *canvas) xy(fx, fy float64) (int, int) {
	b := c.img.Bounds()
	w, h := b.Dx()-2*c.margin, b.Dy()-2*c.margin
	return c.margin + int(fx*float64(w)), b.Dy() - c.margin - int(fy*float64(h))
}

// line draws a 2-pixel line (Bresenham).
func (c *canvas) line(x0, y0, x1, y1 int, col color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := 1, 1
	if x0 > x1 {
		sx = -1
	}
	if y0 > y1 {
		sy = -1
	}
	e := dx + dy
	for {
		c.img.SetRGBA(x0, y0, col)
		c.img.SetRGBA(x0+1, y0, col)
		c.img.SetRGBA(x0, y0+1, col)
		if x0 == x1 && y0 == y1 {
			return
		}
		if e2 := 2 * e; e2 >= dy {
			e += dy
			x0 += sx
		} else {
			e += dx
			y0 += sy
		}
	}
}

// rect fills a rectangle.
func (c *canvas) rect(x0, y0, x1, y1 int, col color.RGBA) {
	for y := min(y0, y1); y <= max(y0, y1); y++ {
		for x := min(x0, x1); x <= max(x0, x1); x++ {
			c.img.SetRGBA(x, y, col)
		}
	}
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

func (c *canvas) save(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	if err := png.Encode(f, c.img); err != nil {
		_ = f.Close()
		return fmt.Errorf("plot %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

// WritePlots writes ttft_cdf.png (x: TTFT up to the largest p99, y: share of requests;
// one line per policy, legend top left), hit_rate.png (one labelled bar per policy, y
// 0..100%, the two bounds as grey and black horizontal lines named in the title) and
// load_<policy>.png (each worker's in-flight requests over time, legend top left).
func WritePlots(dir string, s *Summary) error {
	var xmax float64
	for _, r := range s.Results {
		xmax = max(xmax, r.TTFT.P99)
	}
	if xmax > 0 {
		c := newCanvas(800, 500)
		for i, r := range s.Results {
			col := palette[i%len(palette)]
			px, py := c.xy(0, 0)
			for k, v := range r.TTFTs {
				x, y := c.xy(min(v/xmax, 1), float64(k+1)/float64(len(r.TTFTs)))
				c.line(px, py, x, py, col)
				c.line(x, py, x, y, col)
				px, py = x, y
			}
		}
		names, cols := make([]string, len(s.Results)), make([]color.RGBA, len(s.Results))
		for i, r := range s.Results {
			names[i], cols[i] = r.Label(), palette[i%len(palette)]
		}
		c.axes("TTFT CDF per policy ("+s.Workload+"; wall clock, x up to the largest p99)", "TTFT", "share of requests", xmax, 1, secs, pct)
		c.legend(names, cols)
		if err := c.save(filepath.Join(dir, "ttft_cdf.png")); err != nil {
			return err
		}
	}
	if len(s.Results) > 0 {
		c := newCanvas(800, 500)
		n := len(s.Results)
		for i, r := range s.Results {
			x0, y0 := c.xy((float64(i)+0.15)/float64(n), 0)
			x1, y1 := c.xy((float64(i)+0.85)/float64(n), r.HitRate)
			c.rect(x0, y0, x1, y1, palette[i%len(palette)])
			black := color.RGBA{0, 0, 0, 0xff}
			c.text(x0, y1-4, pct1(r.HitRate), black)
			name := r.Label()
			if w := x1 - x0 + 10; 7*len(name) > w {
				name = name[:max(1, w/7)]
			}
			c.text(x0, y0+15, name, black)
		}
		for _, b := range []struct {
			v   float64
			col color.RGBA
		}{{s.Bounds.Infinite, color.RGBA{0x99, 0x99, 0x99, 0xff}}, {s.Bounds.PooledLRU, color.RGBA{0, 0, 0, 0xff}}} {
			x0, y := c.xy(0, b.v)
			x1, _ := c.xy(1, b.v)
			c.line(x0, y, x1, y, b.col)
		}
		c.axes(fmt.Sprintf("hit rate per policy; grey line: infinite cache %.1f%%, black: pooled LRU %.1f%%", 100*s.Bounds.Infinite, 100*s.Bounds.PooledLRU),
			"", "cached / prompt tokens", 0, 1, nil, pct)
		if err := c.save(filepath.Join(dir, "hit_rate.png")); err != nil {
			return err
		}
	}
	for _, r := range s.Results {
		var ymax, tmax int
		for _, w := range r.PerWorker {
			tmax = max(tmax, len(w.InFlight))
			for _, v := range w.InFlight {
				ymax = max(ymax, v)
			}
		}
		if ymax == 0 || tmax < 2 {
			continue
		}
		c := newCanvas(800, 400)
		for i, w := range r.PerWorker {
			col := palette[i%len(palette)]
			for k := 1; k < len(w.InFlight); k++ {
				x0, y0 := c.xy(float64(k-1)/float64(tmax-1), float64(w.InFlight[k-1])/float64(ymax))
				x1, y1 := c.xy(float64(k)/float64(tmax-1), float64(w.InFlight[k])/float64(ymax))
				c.line(x0, y0, x1, y1, col)
			}
		}
		names, cols := make([]string, len(r.PerWorker)), make([]color.RGBA, len(r.PerWorker))
		for i, w := range r.PerWorker {
			names[i], cols[i] = w.ID, palette[i%len(palette)]
		}
		c.axes(r.Label()+": requests running + waiting per worker", "time", "in flight", float64(tmax-1)*r.SampleEvery, float64(ymax),
			secs, func(v float64) string { return fmt.Sprintf("%.0f", v) })
		c.legend(names, cols)
		if err := c.save(filepath.Join(dir, "load_"+r.Label()+".png")); err != nil {
			return err
		}
	}
	return nil
}
