'use strict';
// On a narrow screen the timeline scrolls sideways inside its frame: bring the as-of line
// into view instead of leaving the frame at the first month. The page works without this.
window.addEventListener('DOMContentLoaded', () => {
  const frame = document.querySelector('#timeline');
  const line = frame && frame.querySelector('svg g.as-of line');
  if (!line || frame.scrollWidth <= frame.clientWidth) return;
  const svg = frame.querySelector('svg');
  const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
  const x = parseFloat(line.getAttribute('x1')) * scale;
  frame.scrollLeft = Math.max(0, x - frame.clientWidth * 0.6);
});
