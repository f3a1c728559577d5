// Loaded before the theme's Font Awesome script: nest the SVG icons inside the <i> elements
// instead of replacing them, so ipywidgets (e.g. Play) keep the elements they render.
window.FontAwesomeConfig = Object.assign(window.FontAwesomeConfig || {}, {autoReplaceSvg: "nest"});
