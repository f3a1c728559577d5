// Loaded on pages with embedded widgets, after require.js and before embed-amd.js
// (see nb_ipywidgets_js in _config.yml). Two fixes for the offline widget manager:
(function () {
  "use strict";

  // 1. Icon fonts. The widget manager loads its Font Awesome fonts from the folder of its AMD
  //    module, which require.js resolves against the *page's* folder ("book/@jupyter-widgets/...",
  //    404). Map the module prefixes onto _static/widgets/, where `make assets` put the fonts.
  var root = document.documentElement.dataset.content_root || "./";
  var widgets = new URL(root + "_static/widgets", document.baseURI).href;
  window.require.config({
    paths: {
      "@jupyter-widgets/html-manager/dist": widgets,
      "@jupyter-widgets": widgets
    }
  });

  // 2. Widget labels. ipywidgets "typesets" every label with the MathJax 2 call
  //    MathJax.Hub.Queue(["Typeset", MathJax.Hub, el]); the book uses MathJax 3, which has no
  //    Hub, so each label threw "Cannot read properties of undefined (reading 'Queue')".
  //    A no-op Hub removes the error. Labels are shown as written (MathJax here only processes
  //    the book's own math), so write them in Unicode ("β"), not TeX ("$\beta$").
  //    MathJax 3 replaces window.MathJax when it loads: the Hub is attached to whatever object
  //    window.MathJax holds.
  var current = window.MathJax;
  var hub = {Queue: function () {}};
  function withHub(mj) {
    if (mj && typeof mj === "object" && !mj.Hub) {
      // not enumerable: MathJax 3 reads its configuration from this object's own keys
      Object.defineProperty(mj, "Hub", {value: hub, configurable: true, writable: true});
    }
    return mj;
  }
  withHub(current);
  Object.defineProperty(window, "MathJax", {
    configurable: true,
    get: function () { return current; },
    set: function (value) { current = withHub(value); }
  });
})();
