//! The report's plot: committed transfers per second (median over the rounds) against the
//! number of clients, one line per system, one panel per `synchronous_commit` setting (rows)
//! and workload (columns). Drawn as SVG by plotters without system fonts: the text is left
//! to the viewer's `sans-serif`, so the same results always give the same file.

use super::{Grouped, median};
use crate::stats::System;
use crate::workload::Workload;
use plotters::coord::Shift;
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::{BTreeMap, BTreeSet};

const WIDTH: u32 = 960;
/// Title and legend, above the panels.
const HEADER: u32 = 80;
const PANEL_HEIGHT: u32 = 320;
const FONT: &str = "sans-serif";

/// How each system is drawn, in legend order.
struct Style {
    system: System,
    label: &'static str,
    color: RGBColor,
}

const STYLES: [Style; 3] = [
    Style {
        system: System::Pgbench,
        label: "pgbench",
        color: RGBColor(0x55, 0x55, 0x55),
    },
    Style {
        system: System::Endpoint,
        label: "endpoint",
        color: RGBColor(0x1f, 0x77, 0xb4),
    },
    Style {
        system: System::Mjolnir,
        label: "Mjölnir",
        color: RGBColor(0xd6, 0x27, 0x28),
    },
];

/// A system's marker: a different shape for each, so the lines stay apart without colour.
fn marker<DB: DrawingBackend>(
    system: System,
    at: (SegmentValue<i32>, f64),
    color: RGBColor,
) -> DynElement<'static, DB, (SegmentValue<i32>, f64)> {
    let style = color.filled();
    match system {
        System::Pgbench => Cross::new(at, 5, color.stroke_width(2)).into_dyn(),
        System::Endpoint => TriangleMarker::new(at, 6, style).into_dyn(),
        System::Mjolnir => Circle::new(at, 4, style).into_dyn(),
    }
}

/// One panel's lines: per system, (index of the client count, median TPS).
type Lines = BTreeMap<System, Vec<(usize, f64)>>;

/// The SVG document, or `None` when there are no results to plot.
pub fn svg(
    grouped: &Grouped,
    sync_modes: &[String],
    rounds: u32,
) -> anyhow::Result<Option<String>> {
    let clients: Vec<u32> = grouped
        .keys()
        .map(|(_, _, c)| *c)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let workloads: Vec<Workload> = [Workload::Uniform, Workload::Hot]
        .into_iter()
        .filter(|w| grouped.keys().any(|(_, gw, _)| gw == w))
        .collect();
    if clients.is_empty() || workloads.is_empty() || sync_modes.is_empty() {
        return Ok(None);
    }
    let rows = u32::try_from(sync_modes.len())?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEADER + rows * PANEL_HEIGHT))
            .into_drawing_area();
        root.fill(&WHITE)?;
        let (header, body) = root.split_vertically(HEADER);
        draw_header(&header, rounds)?;
        let panels = body.split_evenly((sync_modes.len(), workloads.len()));
        let mut panels = panels.iter();
        for sync in sync_modes {
            for &workload in &workloads {
                let lines = lines(grouped, sync, workload, &clients);
                let area = panels.next().expect("one panel per (sync, workload)");
                let caption = format!("{}, synchronous_commit = {sync}", workload.name());
                draw_panel(area, &caption, &clients, &lines)?;
            }
        }
        root.present()?;
    }
    Ok(Some(out))
}

fn lines(grouped: &Grouped, sync: &str, workload: Workload, clients: &[u32]) -> Lines {
    let mut lines = Lines::new();
    for (i, &c) in clients.iter().enumerate() {
        let Some(runs) = grouped.get(&(sync.to_owned(), workload, c)) else {
            continue;
        };
        for (system, rounds) in runs {
            let tps = median(rounds.values().map(|r| r.tps).collect());
            lines.entry(*system).or_default().push((i, tps));
        }
    }
    lines
}

/// The title, and one legend for all the panels.
fn draw_header(area: &DrawingArea<SVGBackend<'_>, Shift>, rounds: u32) -> anyhow::Result<()> {
    let (w, _) = area.dim_in_pixel();
    let center = i32::try_from(w / 2)?;
    let title = format!(
        "Bank transfers: committed transfers per second against clients (median of {rounds} round{})",
        if rounds == 1 { "" } else { "s" }
    );
    area.draw(&Text::new(
        title,
        (center, 14),
        (FONT, 22)
            .into_font()
            .style(FontStyle::Bold)
            .color(&BLACK)
            .pos(Pos::new(HPos::Center, VPos::Top)),
    ))?;
    // Three entries of a line sample, a marker and the name, centred.
    let entry = 130;
    let mut x = center - entry * 3 / 2 + 10;
    let y = 58;
    for s in &STYLES {
        let line = s.color.stroke_width(2);
        area.draw(&PathElement::new(vec![(x, y), (x + 30, y)], line))?;
        match s.system {
            System::Pgbench => area.draw(&Cross::new((x + 15, y), 5, line))?,
            System::Endpoint => {
                area.draw(&TriangleMarker::new((x + 15, y), 6, s.color.filled()))?
            }
            System::Mjolnir => area.draw(&Circle::new((x + 15, y), 4, s.color.filled()))?,
        }
        area.draw(&Text::new(
            s.label,
            (x + 38, y),
            (FONT, 18)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))?;
        x += entry;
    }
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    clients: &[u32],
    lines: &Lines,
) -> anyhow::Result<()> {
    let top = lines
        .values()
        .flatten()
        .map(|(_, tps)| *tps)
        .filter(|tps| tps.is_finite())
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let last = i32::try_from(clients.len())? - 1;
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .caption(caption, (FONT, 18))
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..last).into_segmented(), 0.0..top)?;
    let x_label = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => usize::try_from(*i)
            .ok()
            .and_then(|i| clients.get(i))
            .map_or_else(String::new, ToString::to_string),
        SegmentValue::Last => String::new(),
    };
    let y_label = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .disable_x_mesh()
        .bold_line_style(RGBColor(0xdd, 0xdd, 0xdd))
        .light_line_style(TRANSPARENT)
        .x_labels(clients.len())
        .x_label_formatter(&x_label)
        .y_labels(6)
        .y_label_formatter(&y_label)
        .x_desc("clients")
        .y_desc("transfers/s")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .draw()?;
    let at = |i: usize, tps: f64| -> (SegmentValue<i32>, f64) {
        (
            SegmentValue::CenterOf(i32::try_from(i).unwrap_or(i32::MAX)),
            tps,
        )
    };
    for s in &STYLES {
        let Some(points) = lines.get(&s.system) else {
            continue;
        };
        let points: Vec<_> = points
            .iter()
            .filter(|(_, tps)| tps.is_finite())
            .map(|&(i, tps)| at(i, tps))
            .collect();
        chart.draw_series(LineSeries::new(
            points.iter().cloned(),
            s.color.stroke_width(2),
        ))?;
        chart.draw_series(points.iter().map(|p| marker(s.system, p.clone(), s.color)))?;
    }
    Ok(())
}
